"""8. Quorum e2e on a 3-node RabbitMQ cluster of the bench's own, against one node
started the same way (issue 26's cluster row: a figure, no target).

Each repetition starts its own nodes on loopback ports (tests/cluster's
ClusterNode and Cluster: own names, ports, data, logs, run as user rabbitmq,
joined with join_cluster; never the machine's broker on 5672), one at a time:
a single node, and a cluster of three, in alternating order between
repetitions so that neither always meets a warmer machine. On each it runs the
e2e shape of m_e2e.py twice, one hop and the dispatcher path, each in a vhost
of its own: `taskqueue run` (1 dispatcher, 2 `bench` workers, quorum queues,
`[amqp] url` listing every node of the cluster: each process starts at its own
node) and one client on the first node publishing N tasks as fast as it can
(persistent, no confirm), from the first publish to the last task's start.
Every queue must have a member on each node (checked), so the cluster figures
pay for replication. All three nodes share this machine's CPUs with the pool
and the client: the `cpu/task ...: broker` rows (the nodes' beam processes
together) say what replication costs there, not what separate hosts would do.
Nodes are stopped at the end of the repetition (and killed by pid when they
do not stop), also when a run fails; their logs are kept in the log directory.

    python m_cluster.py send PORT VHOST one-hop|dispatcher N PREFIX
is the publishing client (a process of its own, as peers/send.py is for m_e2e).
"""
import contextlib
import itertools
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pika

from taskqueue.host.config import AmqpSettings
from taskqueue.protocol.topology import worker_queue

import onehop
from common import BIN, HOST, BenchError, Client, Proc, count_records, cpu_seconds, cpu_used, \
    record_dir, records, session_pids, wait_until

TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
#: The cluster sizes compared: a single node and tests/cluster's three.
SIZES = (1, 3)
PATHS = ("one-hop", "dispatcher")
_repetitions = itertools.count()


def _cluster_code():
    """tests/nodes.py and tests/cluster/rabbitcluster.py: the one place that knows how to
    start, join and stop nodes of our own. Appended to the path: bench's modules win."""
    for path in (TESTS, os.path.join(TESTS, "cluster")):
        if path not in sys.path:
            sys.path.append(path)
    import nodes
    import rabbitcluster
    return nodes, rabbitcluster


class NodeClient(Client):
    """common.Client on a node of ours (its port, not the machine's broker)."""

    def __init__(self, port, vhost):
        self.vhost, self.settings = vhost, AmqpSettings()
        self.connection = pika.BlockingConnection(pika.ConnectionParameters(
            HOST, port, virtual_host=vhost, credentials=pika.PlainCredentials("guest", "guest")))
        self.channel = self.connection.channel()


@contextlib.contextmanager
def running_cluster(size, rep, workdir):
    """`size` nodes joined into a cluster (one: a lone node started the same way), on
    loopback ports; stopped (killed by pid if need be) and removed afterwards."""
    nodes, rabbitcluster = _cluster_code()
    # Under /tmp, not the 0700 workdir: user rabbitmq must reach the nodes' files.
    base = tempfile.mkdtemp(prefix=f"taskqueue-bench-cluster{size}-")
    os.chmod(base, 0o755)
    ports = iter(nodes.free_ports(2 * size))
    members = []
    cluster = rabbitcluster.Cluster(members)
    try:
        for n in range(1, size + 1):
            members.append(rabbitcluster.ClusterNode(
                os.path.join(base, f"n{n}"), f"tqbench{n}-{os.getpid()}-{rep}@localhost", HOST,
                next(ports), dist_port=next(ports)))
        cluster.start()
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            for node in members:
                shutil.copytree(os.path.join(node.base, "log"),
                                os.path.join(workdir, f"cluster{size}-{rep}-{node.name}-log"),
                                dirs_exist_ok=True)
            shutil.rmtree(base, ignore_errors=True)


def start_pool(workdir, cluster, vhost, records_path):
    """`taskqueue run` on `vhost`, its [amqp] url naming every node of `cluster`."""
    url = ", ".join(f"amqp://guest:guest@{n.host}:{n.port}/{vhost}" for n in cluster.nodes)
    status_dir = os.path.join(workdir, f"status-{vhost}")
    os.mkdir(status_dir)
    path = os.path.join(workdir, f"run-{vhost}.ini")
    with open(path, "w") as f:
        f.write(f"[DEFAULT]\nworkers: 0\n\n[bench]\nworkers: 2\nrecord_dir: {records_path}\n\n"
                f"[supervisor]\nstatus_dir: {status_dir}\n\n"
                f"[amqp]\nurl: {url}\nqueue_type: quorum\n")
    os.chmod(path, 0o600)
    return Proc([os.path.join(BIN, "taskqueue"), "run", "--config", path, "--log", "stderr"],
                path.replace(".ini", ".log"))


def consuming(client, proc):
    proc.check_alive()
    wanted = (("taskqueue", 1), (worker_queue("bench"), 2))
    return all((client.counts(q) or (0, 0))[1] >= n for q, n in wanted)


def publish(client, path, task_id):
    if path == "one-hop":
        onehop.publish(client.channel, "bench", json.dumps({"id": task_id}).encode())
    else:
        body = {"worker_type": "bench", "workitem": {"id": task_id}}
        client.publish("taskqueue", json.dumps(body).encode(), content_type="application/json")


def warm_up(client, proc, path, records_path, label):
    """Tasks one at a time until each worker has started one; how many were sent.

    Consuming is not yet running tasks: a worker starts none before it has read the
    cancels stream once, and on a freshly formed cluster the stream refused a
    worker's first read (INTERNAL_ERROR), read again cancelstream.REOPEN (5 s) later:
    that stall would be in the figure, and it is no throughput."""
    sent = []

    def both_started():
        proc.check_alive()
        if _workers_started(records_path) >= 2:
            return True
        publish(client, path, f"{label}-warm{len(sent)}")
        sent.append(1)
        return False
    wait_until(both_started, 60, f"{label}: both workers running tasks", interval=0.05)
    wait_until(lambda: count_records(records_path) >= len(sent) or proc.check_alive(), 30,
               f"{label}: the warm-up tasks done")
    return len(sent)


def _workers_started(records_path):
    """Worker processes that recorded a task (each writes <pid>.rec)."""
    return sum(1 for name in os.listdir(records_path)
               if os.path.getsize(os.path.join(records_path, name)))


def check_members(cluster, vhost, layout_path):
    """Every queue the pool declared has a member on each node (else the figure would not
    be of a replicated queue). Where the queues' leaders and the pool's connections are
    goes to `layout_path`, for reading the figure."""
    queues = cluster.queues(vhost)
    with open(layout_path, "w") as f:
        for name, row in sorted(queues.items()):
            f.write(f"queue {name}: {row.get('type')}, leader {row.get('leader')}, "
                    f"members {row.get('members')}\n")
        f.write(f"taskqueue connections per node: {cluster.spread()}\n")
    for name, row in queues.items():
        if row.get("type") == "quorum" and len(row.get("members") or []) != len(cluster.nodes):
            raise BenchError(f"queue {name} on {len(cluster.nodes)} nodes has members "
                             f"{row.get('members')}")


def run_one(workdir, cluster, path, count, label):
    """One e2e run: (tasks/s, publish rate, CPU us per task of the pool, the nodes, the
    client), as m_e2e.run_one measures them."""
    first = cluster.nodes[0]
    vhost = f"tqbench-{os.getpid()}-{label}"
    first.ctl("add_vhost", vhost)
    first.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    records_path = record_dir(workdir, label)
    proc = start_pool(workdir, cluster, vhost, records_path)
    client = NodeClient(first.port, vhost)
    try:
        wait_until(lambda: consuming(client, proc), 120, f"{label}: the pool consuming")
        if path == "one-hop":
            onehop.ensure_bound(client, worker_queue("bench"), "bench")
        check_members(cluster, vhost, os.path.join(workdir, f"{label}-layout.txt"))
        warm = warm_up(client, proc, path, records_path, label)
        own, broker = session_pids(proc.pid), [n.beam_pid() for n in cluster.nodes]
        cpu_before = cpu_seconds(own), cpu_seconds(broker), _children_cpu()
        sender = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "send", str(first.port), vhost, path,
             str(count), label], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            line = sender.stdout.readline()   # once it has published them all
            if not line:
                raise BenchError(f"{label}: the client exited {sender.wait()} before "
                                 f"publishing {count} tasks (its traceback is above)")
            times = json.loads(line)
            wait_until(lambda: count_records(records_path) >= warm + count or proc.check_alive(),
                       max(120, count / 20), f"{count} {label} tasks done", interval=0.05)
            cpu_after = [cpu_seconds(own), cpu_seconds(broker), None]
        finally:
            sender.stdin.close()   # now it may close its connection, and exit
            try:
                sender.wait(60)
            except subprocess.TimeoutExpired:
                sender.kill()
                sender.wait()
        cpu_after[2] = _children_cpu()
    finally:
        try:
            proc.stop()
        finally:
            client.close()
            first.ctl("delete_vhost", vhost, check=False)
    last = max(records(records_path).values())
    own_cpu, broker_cpu = (cpu_used(b, a) for b, a in zip(cpu_before[:2], cpu_after[:2]))
    cpu = {"own processes": own_cpu, "broker": broker_cpu, "client": cpu_after[2] - cpu_before[2]}
    return (count / (last - times["start"]), count / (times["end"] - times["start"]),
            {what: seconds * 1e6 / count for what, seconds in cpu.items()})


def _children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def _terminable():
    """A SIGTERM to the bench ends it through the finally blocks: the pool and the nodes
    are stopped, not left running on their ports."""
    def stop(signum, frame):
        raise SystemExit(f"bench: cluster: signal {signum}, stopping the nodes")
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def measure(workdir, args):
    if os.getuid() != 0:
        if getattr(args, "cluster_skip_unless_root", False):
            print("bench: cluster: skipped, not root (--cluster-skip-unless-root)",
                  file=sys.stderr)
            return {}
        raise BenchError("the cluster measurement needs root (it starts RabbitMQ nodes as "
                         "user rabbitmq); --cluster-skip-unless-root skips it instead")
    rep = next(_repetitions)
    out = {}
    with _terminable():
        for size in (SIZES if rep % 2 == 0 else SIZES[::-1]):
            with running_cluster(size, rep, workdir) as cluster:
                for path in PATHS:
                    rate, publish_rate, cpu = run_one(workdir, cluster, path, args.tasks,
                                                      f"cluster{size}-{path}-{rep}")
                    out[f"cluster {path} {size} e2e"] = rate
                    out[f"cluster {path} {size} publish"] = publish_rate
                    for what, us in cpu.items():
                        out[f"cpu/task cluster {path} {size}: {what}"] = us
    return out


def send(port, vhost, path, count, prefix):
    """Publish `count` bench tasks on `path` as fast as one client can (persistent, no
    confirm, as peers/send.py); print {"start", "end"} (time.time()), then keep the
    connection until stdin closes (closing it at once may drop the last messages)."""
    client = NodeClient(int(port), vhost)
    start = time.time()
    for n in range(int(count)):
        publish(client, path, f"{prefix}{n}")
    print(json.dumps({"start": start, "end": time.time()}), flush=True)
    sys.stdin.read()
    client.close()


if __name__ == "__main__" and sys.argv[1:2] == ["send"]:
    send(*sys.argv[2:])
