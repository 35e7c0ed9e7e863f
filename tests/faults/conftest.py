"""The fault suite's own broker: a RabbitMQ node on other ports, behind a TCP proxy.

The suite restarts this node and cuts connections through the proxy; the
machine's shared broker on 5672 is never touched. Figures the tests record
in FIGURES are printed at the end of the run.
"""
import os
import shutil
import tempfile

import pytest

from figures import FIGURES
from support import report_figures
from netfaults import TcpProxy
from nodes import RabbitNode


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
    report_figures(terminalreporter, "fault suite figures", FIGURES)
