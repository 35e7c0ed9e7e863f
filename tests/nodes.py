"""RabbitMQ nodes of a test's own (other ports, own directories), plain or with a
TLS listener, and the certificates the TLS ones use.

The fault suite (tests/faults) restarts its node; the TLS tests
(tests/integration/test_tls.py, tests/faults/test_tls_faults.py) start one with
a TLS listener and rabbitmq_auth_mechanism_ssl; the management API's tests
(tests/integration/test_management_api.py) one with rabbitmq_management. The
machine's shared broker on 5672 is never touched (nor its plugins). Starting a node as user rabbitmq needs root.
"""
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time

#: The client certificate's CN: the broker user SASL EXTERNAL maps it to.
CLIENT_CN = "tqtls-client"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(count):
    """`count` free ports, all different: each held bound until all are chosen (two
    free_port() calls in a row may give the same port, the first one closed already)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


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


class RabbitNode:
    """A RabbitMQ node: own name, ports, data and logs (man rabbitmq-env.conf).

    `config`: more rabbitmq.conf lines ("{base}" stands for the node's directory);
    `plugins`: the plugins to enable; `files`: copied into the node's directory,
    owned by rabbitmq (a broker's certificates and key); `ready_port`: the port
    whose listener says the node is up (default: the plaintext one); `nofile`: the
    node's open-file soft limit (runuser's PAM session sets 1024, and RabbitMQ sizes
    its connection limit from it at boot), at most the hard one."""

    def __init__(self, base, prefix, config=(), plugins=(), files=(), ready_port=None,
                 nofile=None):
        self.base = base
        self.nofile = nofile
        self.name = f"{prefix}{os.getpid()}@localhost"
        self.port, self.dist_port = free_ports(2)
        self.ready_port = ready_port or self.port
        for sub in ("mnesia", "log"):
            os.makedirs(os.path.join(base, sub))
        for path in files:
            shutil.copy(path, base)
        with open(os.path.join(base, "rabbitmq.conf"), "w") as f:
            # Its own config: the machine's /etc/rabbitmq/rabbitmq.conf listens on 5672.
            f.write(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
            f.write("".join(line.replace("{base}", base) + "\n" for line in config))
        with open(os.path.join(base, "enabled_plugins"), "w") as f:
            f.write(f"[{','.join(plugins)}].\n")
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
        # prlimit after runuser: its PAM session would reset a limit set before.
        limit = ["prlimit", f"--nofile={self.nofile}:"] if self.nofile else []
        with open(os.path.join(self.base, "server.out"), "a") as out:
            self.process = subprocess.Popen(
                ["runuser", "-u", "rabbitmq", "--", *limit, "env",
                 *[f"{k}={v}" for k, v in env.items()], "/usr/lib/rabbitmq/bin/rabbitmq-server"],
                stdout=out, stderr=subprocess.STDOUT)
        wait_until_listening(self.ready_port, 120)

    def ctl(self, *args, timeout=120):
        return subprocess.run(["rabbitmqctl", "-q", "-n", self.name, *args], check=True,
                              capture_output=True, text=True, timeout=timeout).stdout

    def stop(self):
        subprocess.run(["rabbitmqctl", "-q", "-n", self.name, "stop"], capture_output=True)
        if self.process is not None:
            self.process.wait(60)
            self.process = None

    def restart(self):
        self.stop()
        self.start()


def tls_node(base, certs, prefix, server="server"):
    """A RabbitNode with a TLS listener (`tls_port`) presenting certs' <server>.pem
    (localhost's certificate; expired-server: one that expired), verifying client certificates when offered and mapping one to the
    user of its CN for SASL EXTERNAL; PLAIN still works. Not started."""
    tls_port = free_port()
    server = {"cacertfile": "ca.pem", "certfile": f"{server}.pem", "keyfile": f"{server}.key"}
    node = RabbitNode(
        base, prefix, ready_port=tls_port, plugins=["rabbitmq_auth_mechanism_ssl"],
        files=[os.path.join(certs, name) for name in server.values()],
        config=[f"listeners.ssl.default = 127.0.0.1:{tls_port}",
                *(f"ssl_options.{key} = {{base}}/{name}" for key, name in server.items()),
                "ssl_options.verify = verify_peer", "ssl_options.fail_if_no_peer_cert = false",
                "auth_mechanisms.1 = PLAIN", "auth_mechanisms.2 = EXTERNAL",
                "ssl_cert_login_from = common_name"])
    node.tls_port = tls_port
    return node


def management_node(base, prefix, stats_interval_ms=1000):
    """A RabbitNode with the management plugin, its HTTP API on 127.0.0.1:
    `management_port` (the ready port: the API starts last). Its queue statistics
    are collected every `stats_interval_ms` (RabbitMQ's default: 5000). Not started."""
    management_port = free_port()
    node = RabbitNode(base, prefix, ready_port=management_port, plugins=["rabbitmq_management"],
                      config=["management.tcp.ip = 127.0.0.1",
                              f"management.tcp.port = {management_port}",
                              f"collect_statistics_interval = {stats_interval_ms}"])
    node.management_port = management_port
    return node


@contextlib.contextmanager
def running_node(make, name):
    """`make(base)`'s node in a temporary directory, started; stopped and removed afterwards."""
    base = tempfile.mkdtemp(prefix=f"{name}-node-")
    os.chmod(base, 0o755)
    try:
        node = make(base)
        try:
            node.start()
            yield node
        finally:
            node.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def certificates(prefix):
    """A temporary directory of make_certificates()'s files, removed afterwards."""
    path = tempfile.mkdtemp(prefix=prefix)
    try:
        make_certificates(path)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def running_tls_node(certs, name, server="server"):
    """tls_node() in a temporary directory, started; stopped and removed afterwards."""
    base = tempfile.mkdtemp(prefix=f"{name}-node-")
    node = tls_node(base, certs, name, server=server)
    try:
        node.start()
        yield node
    finally:
        node.stop()
        shutil.rmtree(base, ignore_errors=True)


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


#: X.509v3 extensions of a leaf certificate: Python 3.13 verifies strictly
#: (VERIFY_X509_STRICT) and wants its authority key identifier.
LEAF_EXTENSIONS = ("basicConstraints = CA:FALSE\nsubjectKeyIdentifier = hash\n"
                   "authorityKeyIdentifier = keyid, issuer\n"
                   "keyUsage = digitalSignature, keyEncipherment\n")


def make_certificates(path):
    """In `path`: ca.pem/ca.key, server.pem/.key (localhost), client.pem/.key (CN
    CLIENT_CN), other-ca.pem/.key, stranger.pem/.key (a client certificate of
    other-ca), expired-server.pem/.key (localhost) and expired-client.pem/.key
    (CLIENT_CN), of ca but valid on 2020-01-01 only."""
    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-subj", f"/CN=taskqueue test {ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
                # Python 3.13 verifies strictly: a CA needs its key usage.
                "-addext", "keyUsage = critical, keyCertSign, cRLSign", cwd=path)
    with open(os.path.join(path, "server.ext"), "w") as f:
        f.write(LEAF_EXTENSIONS + "subjectAltName = DNS:localhost\nextendedKeyUsage = serverAuth\n")
    with open(os.path.join(path, "client.ext"), "w") as f:
        f.write(LEAF_EXTENSIONS + "extendedKeyUsage = clientAuth\n")
    for name, cn, ca, ext in (("server", "localhost", "ca", "server"),
                              ("client", CLIENT_CN, "ca", "client"),
                              # refused by the broker in the handshake: not of its CA
                              ("stranger", CLIENT_CN, "other-ca", "client")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=path)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
                "-CAcreateserial", "-days", "2", "-extfile", f"{ext}.ext",
                "-out", f"{name}.pem", cwd=path)
    make_expired(path, "expired-server", "localhost", "server.ext")
    make_expired(path, "expired-client", CLIENT_CN, "client.ext")
    for name in os.listdir(path):
        os.chmod(os.path.join(path, name), 0o644)
    os.chmod(os.path.join(path, "client.key"), 0o600)   # root's alone
    os.chmod(path, 0o755)


def make_expired(path, name, cn, extfile):
    """<name>.pem/.key signed by ca, valid from 2020-01-01 to 2020-01-02 only.
    OpenSSL 3.0's `x509 -req` cannot set the start date; `openssl ca` can."""
    state = os.path.join(path, f"{name}-ca")
    os.mkdir(state)
    open(os.path.join(state, "index.txt"), "w").close()
    with open(os.path.join(state, "ca.cnf"), "w") as f:
        f.write(f"[ca]\ndefault_ca = test\n[test]\ndir = {state}\ndatabase = {state}/index.txt\n"
                f"new_certs_dir = {state}\nserial = {state}/serial\ndefault_md = sha256\n"
                "policy = anything\nunique_subject = no\ncopy_extensions = none\n"
                "[anything]\ncommonName = supplied\n")
    with open(os.path.join(state, "serial"), "w") as f:
        f.write("1000\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=path)
    openssl("ca", "-batch", "-config", os.path.join(state, "ca.cnf"), "-notext",
            "-cert", "ca.pem", "-keyfile", "ca.key", "-in", f"{name}.csr", "-out", f"{name}.pem",
            "-startdate", "20200101000000Z", "-enddate", "20200102000000Z",
            "-extfile", extfile, cwd=path)
    shutil.rmtree(state)
