"""The fault suite's own broker: a RabbitMQ node on other ports, behind a TCP proxy.

The suite restarts this node and cuts connections through the proxy; the
machine's shared broker on 5672 is never touched. Figures the tests record
in FIGURES are printed at the end of the run.
"""
import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

from figures import FIGURES
from netfaults import TcpProxy  # noqa: F401  (shared with tests/integration)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    """A RabbitMQ node of the suite's own: own name, ports, data and logs (man rabbitmq-env.conf)."""

    def __init__(self, base):
        self.base = base
        self.name = f"tqfaults{os.getpid()}@localhost"
        self.port, self.dist_port = free_port(), free_port()
        for sub in ("mnesia", "log"):
            os.makedirs(os.path.join(base, sub))
        with open(os.path.join(base, "rabbitmq.conf"), "w") as f:
            # Its own config: the machine's /etc/rabbitmq/rabbitmq.conf listens on 5672.
            f.write(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        with open(os.path.join(base, "enabled_plugins"), "w") as f:
            f.write("[].\n")
        shutil.chown(base, "rabbitmq", "rabbitmq")
        for root, dirs, files in os.walk(base):
            for name in dirs + files:
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
        wait_until_listening(self.port, 120)

    def stop(self):
        subprocess.run(["rabbitmqctl", "-q", "-n", self.name, "stop"], capture_output=True)
        if self.process is not None:
            self.process.wait(60)
            self.process = None

    def restart(self):
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def node():
    if os.getuid() != 0:
        pytest.skip("starting a RabbitMQ node as the rabbitmq user needs root")
    base = tempfile.mkdtemp(prefix="taskqueue-faults-")
    os.chmod(base, 0o755)
    rabbit = RabbitNode(base)
    rabbit.start()
    yield rabbit
    rabbit.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def proxy(node):
    forward = TcpProxy(node.port)
    yield forward
    forward.close()


# The shared fixtures (tests/conftest.py), pointed at this node: the pool
# through the proxy, the test's own client straight to the node.
@pytest.fixture(scope="session")
def vhost(node):
    return "/"


@pytest.fixture(scope="session")
def amqp_port(proxy):
    return proxy.port


@pytest.fixture(scope="session")
def broker_port(node):
    return node.port


def pytest_terminal_summary(terminalreporter):
    if not FIGURES:
        return
    terminalreporter.section("fault suite figures")
    for test, figures in FIGURES.items():
        terminalreporter.write_line(f"{test}:")
        for name, value in figures.items():
            terminalreporter.write_line(f"    {name}: {value}")
