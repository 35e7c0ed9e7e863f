"""TLS to the broker: a RabbitMQ node of the module's own with a TLS listener.

The node (other ports, own directories, as tests/faults) verifies client
certificates when offered and maps one to a user for SASL EXTERNAL
(rabbitmq_auth_mechanism_ssl). The openssl CLI makes a CA, a server
certificate for "localhost" (not for 127.0.0.1), a client certificate, and a CA
the broker was not signed by, in a temp dir.
"""
import os
import pwd
import re
import shutil
import subprocess

import gevent
import gevent.queue
import pika
import pytest

import nodes
from nodes import CLIENT_CN
from support import TASKQUEUE, recorder_config, system_users, wait_for
from taskqueue.broker import amqp as tq_amqp
from taskqueue.host.config import AmqpSettings

#: A Unix user who cannot read the client key.
KEYLESS_USER = "tqtls-keyless"
#: The exit code of the tools when no broker could be reached (startup.EXIT_NO_BROKER),
#: as `taskqueue status` says it.
EXIT_BROKER = 4

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def certs():
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command makes the test certificates: apt-get install openssl")
    with nodes.certificates("tq-tls-certs-") as path:
        yield path


@pytest.fixture(scope="module")
def tls_node(certs):
    if os.getuid() != 0:
        pytest.skip("starting a RabbitMQ node of the test's own (as user rabbitmq) needs root")
    with nodes.running_tls_node(certs, "tqtls") as node:
        node.ctl("add_user", CLIENT_CN, "unused-" + os.urandom(8).hex())
        node.ctl("clear_password", CLIENT_CN)   # EXTERNAL only: no password logs this user in
        node.ctl("set_permissions", "-p", "/", CLIENT_CN, ".*", ".*", ".*")
        yield node


@pytest.fixture(scope="module")
def expired_node(certs):
    """A second node, whose TLS listener presents a certificate that expired in 2020."""
    if os.getuid() != 0:
        pytest.skip("starting a RabbitMQ node of the test's own (as user rabbitmq) needs root")
    with nodes.running_tls_node(certs, "tqtlsexpired", server="expired-server") as node:
        yield node


@pytest.fixture(scope="module")
def keyless_user():
    with system_users(users=(KEYLESS_USER,)):
        yield KEYLESS_USER


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


def test_an_expired_broker_certificate_is_said_per_attempt_in_status_and_by_submit(
        expired_node, certs, start_pool, records):
    amqp = amqp_section(expired_node, certs)
    ca = os.path.join(certs, "ca.pem")
    expected = (r"certificate verify failed: certificate has expired \(the broker's certificate, "
                rf"or a CA certificate of tls_ca_file {re.escape(ca)}\)")
    broker = rf"cannot connect to the broker: localhost:{expired_node.tls_port}: "
    pool = start_pool(recorder_config(records) + "\n" + amqp, raw=True)
    # Each attempt of the dispatcher and the worker: one line naming the broker and why
    pool.wait_log(rf"^.*ERROR: .*{broker}{expected}$", timeout=30, count=3)
    pool.wait_log(r"failed \d+ times in a row; next start in", timeout=30)
    log = pool.log()
    failing = [line for line in log.splitlines() if "ERROR" in line or "Traceback" in line]
    assert all(re.search(broker + expected, line) for line in failing), "\n".join(failing)
    assert pool.process.poll() is None, "the supervisor must back off, not exit"
    status = subprocess.run([TASKQUEUE, "status", "--config", pool.config_path],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == EXIT_BROKER, status.stdout + status.stderr
    assert re.search(broker + expected, status.stdout), status.stdout
    result = submit(write_config(os.path.dirname(pool.config_path), amqp))
    assert result.returncode == EXIT_BROKER
    assert re.search(f"^taskqueue: {broker}{expected}$", result.stderr), result.stderr
    assert pool.stop() == 0


def test_an_expired_client_certificate_is_refused_naming_tls_cert_file(tls_node, certs, workdir):
    amqp = amqp_section(tls_node, certs, extra=client_cert(certs).replace("client.", "expired-client."))
    result = submit(write_config(workdir, amqp))
    assert result.returncode == EXIT_BROKER
    named = f"(tls_cert_file {os.path.join(certs, 'expired-client.pem')})"
    # The broker's alert says why when it reaches the client (TLS 1.2; TLS 1.3 may
    # deliver only the EOF after it). OpenSSL 3.0 words it "sslv3 alert", 3.5 "ssl/tls alert".
    assert re.search(r"the broker refused the TLS connection: ssl(v3|/tls) alert certificate "
                     rf"expired {re.escape(named)}", result.stderr) or f"the broker closed the TLS connection as it began" in result.stderr, \
        result.stderr
    assert named in result.stderr and "Traceback" not in result.stderr


def test_a_prompt_tls_session_acks_200_deliveries_within_the_turn_without_a_writable_watcher(
        tls_node, certs):
    """promptwrite.PromptTLS over a real TLS stream: each ack is in the kernel after one
    turn of the hub, pika never watches for writability for them, and the stream stays
    whole (the node got every ack, and answers a declare after them)."""
    queue, count = "prompt_tls", 200
    settings = AmqpSettings(host="localhost", port=tls_node.tls_port, tls=True,
                            tls_ca_file=os.path.join(certs, "ca.pem"))
    session = tq_amqp.Session(settings, "test prompt tls").open()
    publisher = None
    try:
        assert session.write_promptly() is True
        transport = session._connection._transport
        assert hasattr(transport, "_ssl_writable_action"), "not pika's TLS transport"
        watchers, real_set_writer = [], transport._nbio.set_writer
        transport._nbio.set_writer = lambda fd, cb: (watchers.append(fd), real_set_writer(fd, cb))
        session.declare_queue(queue)
        publisher = pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", tls_node.port, credentials=pika.PlainCredentials("guest", "guest")))
        channel = publisher.channel()
        for n in range(count):
            channel.basic_publish("", queue, b"%d" % n)
        deliveries = gevent.queue.Queue()
        session.qos(4)    # a worker's window: deliveries and acks interleave on the stream
        session.consume(queue, lambda method, props, body: deliveries.put((method, body)))
        # Frames written while pika reads (a reply's callback: the declare's aside
        # channel) are pika's to send, on its writable event; the acks are the worker's.
        watchers.clear()
        bodies = []
        for _ in range(count):
            method, body = deliveries.get(timeout=10)
            bodies.append(body)
            session.ack(method.delivery_tag)
            gevent.sleep(0)    # one turn of the hub: the ack is in the kernel after it
            assert transport.get_write_buffer_size() == 0
        acks_watched = list(watchers)
        assert sorted(bodies) == sorted(b"%d" % n for n in range(count))
        assert session.declare_queue(queue) == 0    # a reply after 200 prompt TLS writes
        assert acks_watched == [] and session.is_open
        session.close()
        # The node got every ack: closing the session requeued none.
        frame = channel.queue_declare(queue, durable=True, passive=True)
        assert (frame.method.message_count, frame.method.consumer_count) == (0, 0)
        channel.queue_delete(queue)
    finally:
        session.close()
        if publisher is not None:
            publisher.close()
