"""TLS to the broker: a RabbitMQ node of the module's own with a TLS listener.

The node (other ports, own directories, as tests/faults) verifies client
certificates when offered and maps one to a user for SASL EXTERNAL
(rabbitmq_auth_mechanism_ssl). The openssl CLI makes a CA, a server
certificate for "localhost" (not for 127.0.0.1), a client certificate, and a CA
the broker was not signed by, in a temp dir.
"""
import grp
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

from support import TASKQUEUE, recorder_config, wait_for

#: The client certificate's CN: the broker user SASL EXTERNAL maps it to.
CLIENT_CN = "tqtls-client"
#: A Unix user who cannot read the client key.
KEYLESS_USER = "tqtls-keyless"
#: The exit code of the tools for a broker problem (startup.EXIT_FAILURE).
EXIT_BROKER = 1

pytestmark = pytest.mark.timeout(300)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(path):
    """ca.pem/ca.key, server.pem/.key (localhost), client.pem/.key, other-ca.pem."""
    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-subj", f"/CN=taskqueue test {ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
                # Python 3.13 verifies strictly (VERIFY_X509_STRICT): a CA needs its key usage.
                "-addext", "keyUsage = critical, keyCertSign, cRLSign", cwd=path)
    # ... and a certificate its authority key identifier.
    leaf = ("basicConstraints = CA:FALSE\nsubjectKeyIdentifier = hash\n"
            "authorityKeyIdentifier = keyid, issuer\nkeyUsage = digitalSignature, keyEncipherment\n")
    with open(os.path.join(path, "server.ext"), "w") as f:
        f.write(leaf + "subjectAltName = DNS:localhost\nextendedKeyUsage = serverAuth\n")
    with open(os.path.join(path, "client.ext"), "w") as f:
        f.write(leaf + "extendedKeyUsage = clientAuth\n")
    for name, cn in (("server", "localhost"), ("client", CLIENT_CN)):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=path)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem",
                cwd=path)
    # A client certificate from a CA the broker does not trust: refused in the handshake.
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={CLIENT_CN}",
            "-keyout", "stranger.key", "-out", "stranger.csr", cwd=path)
    openssl("x509", "-req", "-in", "stranger.csr", "-CA", "other-ca.pem", "-CAkey", "other-ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "client.ext", "-out", "stranger.pem", cwd=path)
    for name in os.listdir(path):
        os.chmod(os.path.join(path, name), 0o644)
    os.chmod(os.path.join(path, "client.key"), 0o600)   # root's alone
    os.chmod(path, 0o755)


def wait_until_listening(port, timeout):
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")
            time.sleep(0.1)


class TlsNode:
    """A RabbitMQ node of the module's own with a TLS listener (man rabbitmq-env.conf)."""

    def __init__(self, base, certs):
        self.base, self.certs = base, certs
        self.name = f"tqtls{os.getpid()}@localhost"
        self.port, self.tls_port, self.dist_port = free_port(), free_port(), free_port()
        for sub in ("mnesia", "log"):
            os.makedirs(os.path.join(base, sub))
        server = {"cacertfile": "ca.pem", "certfile": "server.pem", "keyfile": "server.key"}
        for name in server.values():   # the broker's own copies, readable by rabbitmq
            shutil.copy(os.path.join(certs, name), os.path.join(base, name))
        with open(os.path.join(base, "rabbitmq.conf"), "w") as f:
            f.write(f"listeners.tcp.local = 127.0.0.1:{self.port}\n"
                    f"listeners.ssl.default = 127.0.0.1:{self.tls_port}\n"
                    + "".join(f"ssl_options.{k} = {os.path.join(base, v)}\n" for k, v in server.items())
                    + "ssl_options.verify = verify_peer\n"
                    "ssl_options.fail_if_no_peer_cert = false\n"
                    "auth_mechanisms.1 = PLAIN\n"
                    "auth_mechanisms.2 = EXTERNAL\n"
                    "ssl_cert_login_from = common_name\n")
        with open(os.path.join(base, "enabled_plugins"), "w") as f:
            f.write("[rabbitmq_auth_mechanism_ssl].\n")
        for root, dirs, files in os.walk(base):
            shutil.chown(root, "rabbitmq", "rabbitmq")
            for name in files:
                shutil.chown(os.path.join(root, name), "rabbitmq", "rabbitmq")
        self.process = None

    def start(self):
        env = {"HOME": "/var/lib/rabbitmq", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
               "RABBITMQ_NODENAME": self.name, "RABBITMQ_NODE_PORT": str(self.port),
               "RABBITMQ_DIST_PORT": str(self.dist_port),
               "RABBITMQ_MNESIA_BASE": os.path.join(self.base, "mnesia"),
               "RABBITMQ_LOG_BASE": os.path.join(self.base, "log"),
               "RABBITMQ_CONFIG_FILE": os.path.join(self.base, "rabbitmq.conf"),
               "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(self.base, "enabled_plugins")}
        with open(os.path.join(self.base, "server.out"), "a") as out:
            self.process = subprocess.Popen(
                ["runuser", "-u", "rabbitmq", "--", "env", *[f"{k}={v}" for k, v in env.items()],
                 "/usr/lib/rabbitmq/bin/rabbitmq-server"], stdout=out, stderr=subprocess.STDOUT)
        wait_until_listening(self.tls_port, 120)

    def ctl(self, *args):
        subprocess.run(["rabbitmqctl", "-q", "-n", self.name, *args], check=True, capture_output=True)

    def stop(self):
        subprocess.run(["rabbitmqctl", "-q", "-n", self.name, "stop"], capture_output=True)
        if self.process is not None:
            self.process.wait(60)
            self.process = None


@pytest.fixture(scope="module")
def certs():
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command makes the test certificates: apt-get install openssl")
    path = tempfile.mkdtemp(prefix="tq-tls-certs-")
    make_certificates(path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_node(certs):
    if os.getuid() != 0:
        pytest.skip("starting a RabbitMQ node of the test's own (as user rabbitmq) needs root")
    base = tempfile.mkdtemp(prefix="tq-tls-node-")
    node = TlsNode(base, certs)
    node.start()
    try:
        node.ctl("add_user", CLIENT_CN, "unused-" + os.urandom(8).hex())
        node.ctl("clear_password", CLIENT_CN)   # EXTERNAL only: no password logs this user in
        node.ctl("set_permissions", "-p", "/", CLIENT_CN, ".*", ".*", ".*")
        yield node
    finally:
        node.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def keyless_user():
    if os.getuid() != 0:
        pytest.skip("creating a user and switching to it needs root")
    created = False
    try:
        pwd.getpwnam(KEYLESS_USER)
    except KeyError:
        subprocess.run(["adduser", "--system", "--group", "--quiet", "--no-create-home",
                        "--home", f"/nonexistent/{KEYLESS_USER}", KEYLESS_USER], check=True)
        created = True
    yield KEYLESS_USER
    if created:
        subprocess.run(["deluser", "--quiet", "--system", KEYLESS_USER], check=False)
        try:
            grp.getgrnam(KEYLESS_USER)
            subprocess.run(["delgroup", "--quiet", "--system", KEYLESS_USER], check=False)
        except KeyError:
            pass


def amqp_section(node, certs, host="localhost", ca="ca.pem", extra=""):
    return (f"[amqp]\nhost: {host}\nport: {node.tls_port}\ntls: yes\n"
            f"tls_ca_file: {os.path.join(certs, ca)}\n{extra}")


def client_cert(certs):
    return (f"tls_cert_file: {os.path.join(certs, 'client.pem')}\n"
            f"tls_key_file: {os.path.join(certs, 'client.key')}\nauth: external\n")


def write_config(workdir, text):
    path = os.path.join(workdir, f"tls-{os.urandom(3).hex()}.ini")
    with open(path, "w") as f:
        f.write(text)
    return path


def submit(path, body='{"id": "x"}'):
    return subprocess.run([TASKQUEUE, "submit", "--config", path, "recorder", body],
                          capture_output=True, text=True, timeout=60)


def done_through_pool(start_pool, records, amqp, task_id, extra=""):
    """Start a pool on `amqp`, submit one task through the tools, wait for it done."""
    pool = start_pool(recorder_config(records, extra=extra) + "\n" + amqp, raw=True)
    path = write_config(os.path.dirname(pool.config_path), amqp)
    result = submit(path, f'{{"id": "{task_id}"}}')
    assert result.returncode == 0, result.stderr
    wait_for(lambda: task_id in records.ids(), 30, lambda: f"task {task_id} done\n{pool.log()[-3000:]}")
    return pool


def test_tls_with_the_right_ca_runs_a_task_end_to_end(tls_node, certs, start_pool, records):
    pool = done_through_pool(start_pool, records, amqp_section(tls_node, certs), "over-tls")
    assert pool.stop() == 0


def test_check_config_shows_tls_and_names_a_bad_file(tls_node, certs, workdir):
    good = write_config(workdir, "[recorder]\nworkers: 1\n" + amqp_section(tls_node, certs))
    out = subprocess.run([TASKQUEUE, "check-config", "--config", good],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert f"tls_ca_file {os.path.join(certs, 'ca.pem')}" in out.stdout
    # The CA's key where the client key should be: a key that does not match the certificate.
    bad = write_config(workdir, "[recorder]\nworkers: 1\n" + amqp_section(
        tls_node, certs, extra=client_cert(certs).replace("client.key", "ca.key")))
    out = subprocess.run([TASKQUEUE, "check-config", "--config", bad],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert f"[amqp] tls_key_file = '{os.path.join(certs, 'ca.key')}'" in out.stderr
    assert "does not match the certificate" in out.stderr


def test_wrong_ca_names_the_file_backs_off_and_submit_fails_saying_why(tls_node, certs, start_pool, records):
    amqp = amqp_section(tls_node, certs, ca="other-ca.pem")
    ca = os.path.join(certs, "other-ca.pem")
    # OpenSSL says "self-signed certificate in certificate chain" when the broker sends
    # its CA along, "unable to get local issuer certificate" when it does not.
    expected = rf"certificate verify failed: [a-z -]+ \(tls_ca_file {re.escape(ca)}\)"
    pool = start_pool(recorder_config(records) + "\n" + amqp, raw=True)
    lines = pool.wait_log(rf"^.*ERROR: .*localhost:{tls_node.tls_port}: {expected}$", timeout=30, count=2)
    assert pool.process.poll() is None, "the supervisor must back off, not exit"
    log = pool.log()
    assert "Traceback" not in log and "SSLCertVerificationError" not in log, log[-3000:]
    assert pool.wait_log(r"failed \d+ times in a row; next start in", timeout=30)
    assert len(lines) >= 2
    result = submit(write_config(os.path.dirname(pool.config_path), amqp))
    assert result.returncode == EXIT_BROKER
    assert re.search(expected, result.stderr), result.stderr
    status = subprocess.run([TASKQUEUE, "status", "--config", pool.config_path],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode != 0
    assert re.search(expected, status.stdout + status.stderr), status.stdout + status.stderr


def test_name_mismatch_fails_and_tls_server_name_fixes_it(tls_node, certs, workdir):
    # The broker listens on 127.0.0.1, whose certificate names localhost only.
    mismatched = amqp_section(tls_node, certs, host="127.0.0.1")
    result = submit(write_config(workdir, mismatched))
    assert result.returncode == EXIT_BROKER
    assert "certificate verify failed" in result.stderr
    assert "(host 127.0.0.1; set tls_server_name" in result.stderr
    named = amqp_section(tls_node, certs, host="127.0.0.1", extra="tls_server_name: localhost\n")
    result = submit(write_config(workdir, named))
    assert result.returncode == 0, result.stderr
    wrong_name = amqp_section(tls_node, certs, extra="tls_server_name: other.example\n")
    result = submit(write_config(workdir, wrong_name))
    assert result.returncode == EXIT_BROKER
    assert "(tls_server_name other.example)" in result.stderr


def test_client_certificate_with_auth_external_needs_no_password(tls_node, certs, start_pool, records):
    amqp = amqp_section(tls_node, certs, extra=client_cert(certs))
    assert "password" not in amqp and "user" not in amqp
    pool = done_through_pool(start_pool, records, amqp, "external")
    listed = subprocess.run(["rabbitmqctl", "-q", "-n", tls_node.name, "list_connections", "user",
                             "auth_mechanism"], capture_output=True, text=True, check=True).stdout
    assert f"{CLIENT_CN}\tEXTERNAL" in listed
    assert pool.stop() == 0


def test_a_group_whose_user_cannot_read_the_key_still_connects(
        tls_node, certs, keyless_user, start_pool, records):
    key = os.path.join(certs, "client.key")
    assert os.stat(key).st_uid == 0 and os.stat(key).st_mode & 0o077 == 0
    as_user = ["runuser", "-u", keyless_user, "--", "cat", key]
    assert subprocess.run(as_user, capture_output=True).returncode != 0, "the user must not read the key"
    amqp = amqp_section(tls_node, certs, extra=client_cert(certs))
    pool = start_pool(recorder_config(records, extra=f"user: {keyless_user}\n") + "\n" + amqp, raw=True)
    result = submit(write_config(os.path.dirname(pool.config_path), amqp), '{"id": "keyless"}')
    assert result.returncode == 0, result.stderr
    wait_for(lambda: "keyless" in records.ids(), 30, lambda: f"task keyless done\n{pool.log()[-3000:]}")
    uids = {os.stat(f"/proc/{pid}").st_uid for pid in pool.children()}
    assert pwd.getpwnam(keyless_user).pw_uid in uids
    assert pool.stop() == 0


def test_a_refused_client_certificate_names_tls_cert_file(tls_node, certs, workdir):
    amqp = amqp_section(tls_node, certs, extra=client_cert(certs).replace("client.", "stranger."))
    result = submit(write_config(workdir, amqp))
    assert result.returncode == EXIT_BROKER
    # With TLS 1.3 the broker's alert (unknown ca) may reach the client, or only the EOF after it.
    assert f"(tls_cert_file {os.path.join(certs, 'stranger.pem')})" in result.stderr, result.stderr
    assert "the broker refused the TLS connection" in result.stderr or \
        "the broker closed the TLS connection as it began" in result.stderr
    assert "Traceback" not in result.stderr


def test_tls_to_a_plaintext_port_says_so(tls_node, certs, workdir):
    amqp = amqp_section(tls_node, certs).replace(f"port: {tls_node.tls_port}", f"port: {tls_node.port}")
    result = submit(write_config(workdir, amqp))
    assert result.returncode == EXIT_BROKER
    assert "the broker's port does not speak TLS: a plaintext port?" in result.stderr, result.stderr
