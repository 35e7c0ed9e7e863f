"""The cluster suite's own brokers: 3-node RabbitMQ clusters, never the machine's.

`loopback_cluster`: three nodes on 127.0.0.1, each on free ports, for the
node-stop faults. `hosts`: three broker nodes and two worker-pool hosts (and
the test's own client host), each in a network namespace on private bridges,
for a host cut off and a partition. Each is created once per run and removed
at the end, also when a test or the setup fails. Figures the tests record are
printed at the end of the run.
"""
import os
import shutil
import tempfile

import pytest

import clusternet
from clusterload import FIGURES
from nodes import free_ports
from rabbitcluster import Cluster, ClusterNode
from support import report_figures


def _need_root():
    if os.getuid() != 0:
        pytest.skip("starting RabbitMQ nodes as the rabbitmq user needs root")


@pytest.fixture(scope="session")
def loopback_cluster():
    _need_root()
    base = tempfile.mkdtemp(prefix="taskqueue-cluster-")
    os.chmod(base, 0o755)
    nodes = []
    # Six different ports: the nodes bind theirs only once all are chosen.
    ports = iter(free_ports(6))
    try:
        for n in (1, 2, 3):
            nodes.append(ClusterNode(os.path.join(base, f"n{n}"), f"tqc{n}-{os.getpid()}@localhost",
                                     "127.0.0.1", next(ports), dist_port=next(ports)))
        cluster = Cluster(nodes)
        cluster.start()
        yield cluster
    finally:
        Cluster(nodes).stop()
        shutil.rmtree(base, ignore_errors=True)


# The shared fixtures (tests/conftest.py) must not touch the machine's broker:
# pools here get raw configs naming the cluster's nodes.
@pytest.fixture(scope="session")
def vhost():
    return "/"


@pytest.fixture(scope="session")
def amqp_port():
    return None


@pytest.fixture(scope="session")
def broker_port():
    return None


@pytest.fixture
def cluster(loopback_cluster):
    """The loopback cluster with all three nodes running (an earlier test may have
    stopped one for good) and no taskqueue queue left by an earlier test."""
    for node in loopback_cluster.nodes:
        if not node.running:
            node.start()
    loopback_cluster.wait_running(3, 120)
    return loopback_cluster


#: The namespaces' subnets: brokers talk to each other on one, clients reach them on
#: the other, so a partition between brokers leaves the clients' paths up.
CLUSTER_NET, CLIENT_NET = "10.231.1", "10.231.2"


class Hosts:
    """The namespaced hosts: `cluster` (nodes b1..b3), worker hosts h1 and h2, and
    `client`, where the test's own AMQP clients run."""

    def __init__(self, network, cluster, workers, client):
        self.network, self.cluster, self.workers, self.client = network, cluster, workers, client


@pytest.fixture(scope="module")
def hosts():
    _need_root()
    reason = clusternet.usable()
    if reason:
        pytest.skip(reason)
    network = clusternet.Network(f"{os.getpid() % 100000}")
    base = tempfile.mkdtemp(prefix="taskqueue-hosts-")
    os.chmod(base, 0o755)
    nodes = []
    try:
        for n in (1, 2, 3):
            ns = network.host(f"b{n}")
            network.link(ns, "cl", f"{CLUSTER_NET}.1{n}", "cl0")
            network.link(ns, "cn", f"{CLIENT_NET}.1{n}", "cn0")
            nodes.append(ClusterNode(
                os.path.join(base, f"b{n}"), f"tqc{n}@{CLUSTER_NET}.1{n}", f"{CLIENT_NET}.1{n}",
                5672, dist_port=25672, netns=ns,
                conf=["cluster_partition_handling = pause_minority",
                      # guest from other hosts: these hosts are the test's own
                      "loopback_users = none"],
                # A partition is noticed after 10 s of silence, not the default 60.
                erl_args="-kernel net_ticktime 10"))
        workers = []
        for n in (1, 2):
            ns = network.host(f"h{n}")
            network.link(ns, "cn", f"{CLIENT_NET}.2{n}", "eth0")
            workers.append(ns)
        client = network.host("t")
        network.link(client, "cn", f"{CLIENT_NET}.30", "eth0")
        cluster = Cluster(nodes)
        cluster.start()
        yield Hosts(network, cluster, workers, client)
    finally:
        Cluster(nodes).stop()
        network.remove()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def ns_pools():
    """Pools started on namespaced hosts (clusterload.NsPool), killed at the end."""
    pools = []
    yield pools
    for pool in pools:
        pool.kill()


def pytest_terminal_summary(terminalreporter):
    report_figures(terminalreporter, "cluster figures", FIGURES)
