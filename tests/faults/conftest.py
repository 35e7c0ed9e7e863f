"""The fault suite's own broker: a RabbitMQ node on other ports, behind a TCP proxy.

The suite restarts this node and cuts connections through the proxy; the
machine's shared broker on 5672 is never touched. Figures the tests record
in FIGURES are printed at the end of the run.
"""
import os
import shutil
import socket
import tempfile
import threading

import pytest

from figures import FIGURES
from nodes import RabbitNode


class TcpProxy:
    """Forwards 127.0.0.1:port to the node; `cut()` drops every connection at once."""

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.pairs = []
        self.frozen = set()   # ids of pairs whose traffic is dropped: a silent peer
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.pairs.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b, id(client)), daemon=True).start()

    def _pump(self, source, sink, pair_id):
        try:
            while data := source.recv(65536):
                if pair_id not in self.frozen:
                    sink.sendall(data)
        except OSError:
            pass
        with self.lock:  # a closed connection is no longer one to cut or freeze
            self.pairs = [pair for pair in self.pairs if id(pair[0]) != pair_id]
            self.frozen.discard(pair_id)
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        """Drop every connection, as a network failure would (no AMQP close)."""
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self.cuts += 1
        return len(pairs)

    def freeze(self):
        """Keep every connection open but let nothing through, either way: the
        peer falls silent, as behind a dead router. Only heartbeats can tell."""
        with self.lock:
            self.frozen.update(id(client) for client, _ in self.pairs)
            return len(self.pairs)

    def close(self):
        self.listener.close()
        self.cut()


@pytest.fixture(scope="session")
def node():
    if os.getuid() != 0:
        pytest.skip("starting a RabbitMQ node as the rabbitmq user needs root")
    base = tempfile.mkdtemp(prefix="taskqueue-faults-")
    os.chmod(base, 0o755)
    rabbit = RabbitNode(base, "tqfaults")
    rabbit.start()
    yield rabbit
    rabbit.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def proxy(node):
    forward = TcpProxy(node.port)
    yield forward
    forward.close()


@pytest.fixture
def record_dir(workdir):
    """Where the marker plugin writes the ids of the tasks it completed."""
    path = os.path.join(workdir, "done")
    os.mkdir(path)
    os.chmod(path, 0o1777)
    return path


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
