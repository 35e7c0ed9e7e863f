"""[amqp] TLS options: validation naming the file and option, and the kept context."""
import os
import shutil
import ssl
import subprocess
import tempfile

import pytest

from taskqueue.errors import ConfigError
from taskqueue.host import config, tls


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command makes the test certificates: apt-get install openssl")
    path = tmp_path_factory.mktemp("certs")

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=path, check=True, capture_output=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test ca",
            "-keyout", "ca.key", "-out", "ca.pem")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=client",
            "-keyout", "client.key", "-out", "client.csr")
    openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", "client.pem")
    (path / "garbage.pem").write_text("not a certificate\n")
    return path


def load(tmp_path, amqp):
    path = tmp_path / "config.ini"
    path.write_text("[amqp]\n" + amqp)
    return config.load(str(path), set()).amqp


def error_of(tmp_path, amqp):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, amqp)
    return str(info.value)


def test_tls_yes_defaults_to_port_5671_the_system_cas_and_plain_auth(tmp_path):
    settings = load(tmp_path, "host: broker.example\ntls: yes\n")
    assert (settings.tls, settings.port, settings.tls_ca_file, settings.auth) == \
        (True, 5671, None, "plain")


def test_amqps_url_turns_tls_on_for_the_amqps_urls_of_a_list(tmp_path, certs):
    assert load(tmp_path, f"url: amqps://a/\ntls_ca_file: {certs}/ca.pem\n").tls
    assert not load(tmp_path, "url: amqp://a/\n").tls
    assert "expected TLS to be on" in error_of(tmp_path, f"url: amqp://a/\ntls_ca_file: {certs}/ca.pem\n")
    settings = load(tmp_path, f"url: amqps://a/, amqp://b/\ntls_ca_file: {certs}/ca.pem\n")
    pika = pytest.importorskip("pika")
    from taskqueue.broker import pikaparams
    first, second = pikaparams.parameters(settings)
    assert first.ssl_options.context is tls.context(f"{certs}/ca.pem")
    assert first.ssl_options.server_hostname == "a"
    assert second.ssl_options is None and isinstance(second.credentials, pika.PlainCredentials)


def test_client_certificate_and_external_auth_load_and_keep_the_context(tmp_path, certs):
    settings = load(tmp_path, f"host: b\ntls: yes\ntls_ca_file: {certs}/ca.pem\n"
                              f"tls_cert_file: {certs}/client.pem\ntls_key_file: {certs}/client.key\n"
                              "auth: external\n")
    assert settings.auth == "external" and settings.tls_cert_file == f"{certs}/client.pem"
    context = tls.context(settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    # Kept: the same object, not read again (a child after a privilege drop could not).
    assert tls.context(settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file) is context


@pytest.mark.parametrize("amqp, expected", [
    ("tls_ca_file: {certs}/missing.pem\n", "[amqp] tls_ca_file = '{certs}/missing.pem': no such file"),
    ("tls_ca_file: {certs}/garbage.pem\n",
     "[amqp] tls_ca_file = '{certs}/garbage.pem': not a PEM file holding a certificate"),
    ("tls_ca_file: {certs}\n", "[amqp] tls_ca_file = '{certs}': cannot read it"),
    ("tls_cert_file: {certs}/client.pem\ntls_key_file: {certs}/client.pem\n",
     "[amqp] tls_key_file = '{certs}/client.pem': not a PEM file holding a private key"),
    ("tls_cert_file: {certs}/client.pem\ntls_key_file: {certs}/ca.key\n",
     "[amqp] tls_key_file = '{certs}/ca.key': this key does not match the certificate in "
     "{certs}/client.pem"),
    ("tls_cert_file: {certs}/client.pem\n",
     "[amqp] tls_cert_file = '{certs}/client.pem': expected tls_key_file alongside it"),
    ("auth: external\n", "[amqp] auth = 'external': expected tls_cert_file and tls_key_file"),
    ("auth: kerberos\n", "[amqp] auth = 'kerberos': expected one of plain, external"),
    ("tls: maybe\n", "[amqp] tls = 'maybe': expected yes or no"),
])
def test_bad_tls_options_name_file_section_option_and_reason(tmp_path, certs, amqp, expected):
    text = "host: b\n" + ("" if "tls:" in amqp else "tls: yes\n") + amqp.format(certs=certs)
    assert expected.format(certs=certs) in error_of(tmp_path, text)


def test_tls_files_without_tls_are_an_error(tmp_path, certs):
    assert "[amqp] tls_ca_file" in error_of(tmp_path, f"host: b\ntls_ca_file: {certs}/ca.pem\n")
    assert "expected TLS to be on" in error_of(tmp_path, f"host: b\ntls_ca_file: {certs}/ca.pem\n")


def test_external_auth_refuses_a_password(tmp_path, certs):
    message = error_of(tmp_path, f"host: b\ntls: yes\ntls_cert_file: {certs}/client.pem\n"
                                 f"tls_key_file: {certs}/client.key\nauth: external\npassword: s3cret\n")
    assert "[amqp] password = '***': expected no user or password with auth = external" in message
    assert "s3cret" not in message


@pytest.mark.parametrize("url, why", [
    ("amqps://tq:s3cret@b/", "a password there would be ignored, and is a secret in the file"),
    ("amqps://b/, amqps://tq:s3cret@c/", "a password there would be ignored"),
    ("amqps://tq@b/", "a user there would be ignored"),
])
def test_external_auth_refuses_a_url_with_a_user_or_password(tmp_path, certs, url, why):
    message = error_of(tmp_path, f"url: {url}\ntls_cert_file: {certs}/client.pem\n"
                                 f"tls_key_file: {certs}/client.key\nauth: external\n")
    path = tmp_path / "config.ini"
    assert f"{path}: [amqp] url = " in message
    assert ("expected no user or password in the URL with auth = external: the client "
            "certificate authenticates") in message and why in message
    assert "s3cret" not in message


def test_explain_an_expired_certificate_points_at_the_brokers_certificate_too():
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_code, error.verify_message = 10, "certificate has expired"
    settings = config.AmqpSettings(tls=True, tls_ca_file="/etc/taskqueue/ca.pem")
    assert tls.explain(error, settings, "b") == (
        "certificate verify failed: certificate has expired (the broker's certificate, or a CA "
        "certificate of tls_ca_file /etc/taskqueue/ca.pem)")
    settings = config.AmqpSettings(tls=True)
    assert tls.explain(error, settings, "b").endswith(
        "(the broker's certificate, or a CA certificate of the system's CAs)")


def test_explain_finds_the_ssl_error_inside_pika_wrappers():
    class Wrapped(Exception):
        def __init__(self, exception):
            super().__init__()
            self.exception = exception
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_message = "unable to get local issuer certificate"
    settings = config.AmqpSettings(tls=True, tls_ca_file="/etc/taskqueue/ca.pem")
    assert tls.explain(Exception([Wrapped(error)]), settings, "b") == \
        "certificate verify failed: unable to get local issuer certificate (tls_ca_file /etc/taskqueue/ca.pem)"
    assert tls.explain(ConnectionRefusedError(111, "refused"), settings, "b") is None


def test_explain_reads_an_alert_that_pika_only_kept_as_text():
    # TLS 1.3: the broker refuses a client certificate after the handshake, and pika
    # reports it as a StreamLostError whose message holds the SSLError's text.
    lost = Exception("Stream connection lost: SSLError(1, '[SSL: TLSV1_ALERT_UNKNOWN_CA] "
                     "tlsv1 alert unknown ca (_ssl.c:2546)')")
    settings = config.AmqpSettings(tls=True, tls_cert_file="/etc/taskqueue/pool1.pem")
    assert tls.explain(Exception((lost,)), settings, "b") == \
        "the broker refused the TLS connection: tlsv1 alert unknown ca (tls_cert_file /etc/taskqueue/pool1.pem)"


def test_explain_reads_openssl_3_5s_wording_of_an_alert_whole():
    # Debian 13's OpenSSL says "ssl/tls alert": the slash once cut the reason to "ssl".
    lost = Exception("Stream connection lost: SSLError(1, '[SSL: SSLV3_ALERT_CERTIFICATE_EXPIRED] "
                     "ssl/tls alert certificate expired (_ssl.c:2706)')")
    settings = config.AmqpSettings(tls=True, tls_cert_file="/etc/taskqueue/pool1.pem")
    assert tls.explain(Exception((lost,)), settings, "b") == (
        "the broker refused the TLS connection: ssl/tls alert certificate expired "
        "(tls_cert_file /etc/taskqueue/pool1.pem)")


def test_explain_says_a_broker_closing_at_the_start_may_have_refused_the_certificate():
    lost = Exception("Stream connection lost: SSLEOFError(8, 'EOF occurred in violation of "
                     "protocol (_ssl.c:2393)')")
    settings = config.AmqpSettings(tls=True, tls_cert_file="/etc/taskqueue/pool1.pem")
    assert tls.explain(lost, settings, "b").endswith(
        "did it refuse the client certificate? (tls_cert_file /etc/taskqueue/pool1.pem)")
    assert tls.explain(lost, config.AmqpSettings(tls=True), "b").endswith("(no tls_cert_file)")


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_after_the_drop_a_reload_keeps_the_tls_context_built_at_start(certs):
    # Given files every user may reach but a key of root's alone (mode 0600)
    top = tempfile.mkdtemp(prefix="tq-kept-tls-")
    try:
        os.chmod(top, 0o755)
        for name in ("ca.pem", "client.pem", "client.key"):
            shutil.copy(certs / name, top)
            os.chmod(os.path.join(top, name), 0o644)
        os.chmod(os.path.join(top, "client.key"), 0o600)
        path = os.path.join(top, "config.ini")
        with open(path, "w") as f:
            f.write(f"[amqp]\nhost: b\ntls: yes\ntls_ca_file: {top}/ca.pem\n"
                    f"tls_cert_file: {top}/client.pem\ntls_key_file: {top}/client.key\n"
                    "auth: external\n")
        os.chmod(path, 0o644)
        settings = config.load(path, set()).amqp     # at start, as root
        started = tls.context(settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file)
        # When the process gives up root and loads the config again (a reload)
        pid = os.fork()
        if pid == 0:
            code = 99
            try:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                again = config.load(path, set()).amqp
                kept = tls.context(again.tls_ca_file, again.tls_cert_file, again.tls_key_file)
                code = 0 if kept is started else 1
            finally:
                os._exit(code)
        # Then the load succeeds with the context built at start (on main: "cannot read it")
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    finally:
        shutil.rmtree(top)


def test_a_key_file_readable_by_every_user_is_refused_naming_it(tmp_path, certs):
    key = tmp_path / "client.key"
    shutil.copy(certs / "client.key", key)
    os.chmod(key, 0o644)
    path = tmp_path / "config.ini"
    path.write_text(f"[amqp]\nhost: b\ntls: yes\ntls_ca_file: {certs}/ca.pem\n"
                    f"tls_cert_file: {certs}/client.pem\ntls_key_file: {key}\nauth: external\n")
    os.chmod(path, 0o640)
    problem = config.exposed_secret(config.load(str(path), set()))
    assert problem == (f"{key}: the [amqp] tls_key_file of {path} is readable by every user "
                       f"(mode 0644); refusing to use it: chmod 600 {key} (or 640, group "
                       "taskqueue)")
    os.chmod(key, 0o600)
    assert config.exposed_secret(config.load(str(path), set())) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
@pytest.mark.parametrize("option", ["tls_ca_file", "tls_cert_file", "tls_key_file"])
def test_a_root_supervisor_refuses_a_tls_file_another_user_could_change(certs, option):
    # A CA file of another user's lets that user stand in for the broker.
    top = tempfile.mkdtemp(prefix="tq-trust-tls-")
    try:
        os.chmod(top, 0o755)
        for name in ("ca.pem", "client.pem", "client.key"):
            shutil.copy(certs / name, top)
        path = os.path.join(top, "config.ini")
        with open(path, "w") as f:
            f.write(f"[amqp]\nhost: b\ntls: yes\ntls_ca_file: {top}/ca.pem\n"
                    f"tls_cert_file: {top}/client.pem\ntls_key_file: {top}/client.key\n"
                    "auth: external\n")
        os.chmod(path, 0o640)
        assert config.unsafe_files(config.load(path, set()), as_root=True) is None
        name = {"tls_ca_file": "ca.pem", "tls_cert_file": "client.pem",
                "tls_key_file": "client.key"}[option]
        os.chown(os.path.join(top, name), 65534, -1)
        problem = config.unsafe_files(config.load(path, set()), as_root=True)
        assert problem.startswith(f"{top}/{name}: refusing to use the [amqp] {option} of {path} "
                                  "as root: ")
        assert "belongs to user nobody (uid 65534)" in problem
    finally:
        shutil.rmtree(top)


def test_external_auth_refuses_a_management_url(tmp_path, certs):
    # The API is asked with [amqp]'s user and password: auth = external has none.
    message = error_of(tmp_path, f"host: b\ntls: yes\ntls_cert_file: {certs}/client.pem\n"
                                 f"tls_key_file: {certs}/client.key\nauth: external\n"
                                 "[metrics]\nmanagement_url: http://b:15672\n")
    assert "[metrics] management_url = 'http://b:15672': expected no management_url with " \
           "[amqp] auth = external" in message
