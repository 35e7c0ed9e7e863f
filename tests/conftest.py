"""Fixtures for tests against the real RabbitMQ, with real processes and signals.

Integration tests use the machine's broker on 5672; tests/faults overrides
`vhost`, `amqp_port` and `broker_port` with a node of its own. Each pytest
run works in a vhost of its own (created with rabbitmqctl, deleted
afterwards) and every test starts with the taskqueue queues deleted, so
nothing left by an earlier run or test can interfere. The supervisor runs as
the installed `taskqueue` console script of the test virtualenv.
"""
import os
import shutil
import subprocess
import tempfile
import uuid

import pytest

from support import BROKER_HOST, Broker, Pool, Records, config_text
from taskqueue import redact
from taskqueue.client import Client


@pytest.fixture(autouse=True)
def forget_remembered_passwords():
    """Every password a config load saw is masked in the process from then on
    (taskqueue.redact): a test must not inherit the passwords of the tests before
    it (a property test may load a config whose password is '127.0.0.1')."""
    redact._secrets.clear()
    yield
    redact._secrets.clear()


@pytest.fixture(scope="session")
def vhost():
    name = f"taskqueue-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", name], check=True)
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
                   check=True)
    yield name
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], check=False)


@pytest.fixture(scope="session")
def amqp_port():
    """Where taskqueue's processes connect."""
    return 5672


@pytest.fixture(scope="session")
def broker_port():
    """Where the test's own client connects."""
    return 5672


@pytest.fixture
def broker(vhost, broker_port):
    client = Broker(vhost, broker_port)
    client.reset()
    yield client
    client.close()


@pytest.fixture
def workdir():
    """A scratch directory every user can write to (workers may run as other users)."""
    path = tempfile.mkdtemp(prefix="taskqueue-test-")
    os.chmod(path, 0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def record_dir(workdir):
    """Where the marker plugin's workers write the ids of the tasks they completed
    (the fault suite, tests/cluster)."""
    path = os.path.join(workdir, "done")
    os.mkdir(path)
    os.chmod(path, 0o1777)
    return path


@pytest.fixture
def records(workdir):
    path = os.path.join(workdir, "records")
    os.mkdir(path)
    os.chmod(path, 0o1777)
    return Records(path)


@pytest.fixture
def status_dir(workdir):
    """Where the pools of a test put their status sockets (not the host's /run/taskqueue)."""
    return os.path.join(workdir, "run")


@pytest.fixture
def start_pool(workdir, vhost, amqp_port, status_dir):
    pools = []

    def start(body, command="run", heartbeat=None, env=None, raw=False, extra_args=(),
              amqp_extra="", log="stderr", own_status_dir=True, prefix=()):
        """own_status_dir=False: the body has its own [supervisor] section; prefix: see
        Pool."""
        config = body if raw else config_text(vhost, body, heartbeat, amqp_extra, amqp_port)
        if own_status_dir:   # raw configs too: no test touches the host's /run/taskqueue
            config += f"\n[supervisor]\nstatus_dir: {status_dir}\n"
        pool = Pool(workdir, config, command, env, extra_args, log, prefix)
        pools.append(pool)
        return pool
    yield start
    for pool in pools:
        pool.kill()


@pytest.fixture
def client(request, vhost, amqp_port):
    """A Client on the test vhost, named after the test, closed after it."""
    with Client(host=BROKER_HOST, port=amqp_port, vhost=vhost,
                name=f"tq-test-{request.node.name[:80]}-{os.getpid()}") as client:
        yield client


def pytest_collection_modifyitems(config, items):
    """Tests marked once_per_broker are skipped on a stack that follows another on the
    same broker (run-tests: the debian stack after the pypi one); the trixie stack has
    a broker of its own and runs them."""
    if not os.environ.get("TASKQUEUE_TEST_SAME_BROKER"):
        return
    skip = pytest.mark.skip(reason="once_per_broker: ran on the first stack on this broker")
    for item in items:
        if item.get_closest_marker("once_per_broker"):
            item.add_marker(skip)
