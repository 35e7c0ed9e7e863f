"""Scale: N worker types x 1 process each on one host (a `taskqueue workerpool`).

The N types are N real plugins as taskqueue finds them: entry points of the
group `worker.plugins`, in a distribution's metadata on the path. The bench
writes that metadata (`<dir>/taskqueue_bench_types-0.1.0.dist-info`, N entry
points `btNNN = tqbench.noop:Noop.factory`: the bench plugin's no-op under N
names) and puts the directory on the pool's PYTHONPATH only, so nothing else
in the bench venv sees the types. The config has `[DEFAULT] workers: 0` and a
section per type with `workers: 1`.

Each worker child holds 2 AMQP connections (its session; its side connection,
for its event log and its cancels reader, broker/sideline.py; 3 before issue
26's cut): 200 types are 400 connections, more than the machine's shared
broker (127.0.0.1:5672, open-file limit 1024) can take beside the test suite (on 2026-12-06 a 200-type run ran it out of descriptors and its Mnesia
died). So each repetition starts a RabbitMQ node of its own (tests/nodes.py's
RabbitNode, own ports and directories under /tmp) with its open-file limit
raised (NODE_NOFILE, or the hard limit if lower), measures every N there, and stops it (rabbitmqctl stop,
then its pid checked, and killed if it lingers). The shared broker is never
used by this measurement.

For each N, in a fresh vhost:
- `first`: from just before the pool's process is started until the last
  child's `STARTING -> RUNNING` line (the supervisor logs it when it reads the
  child's `ready` report, sent once its basic_consume was answered; 1 ms
  timestamps), with the queues created by that start; `first, children`: until
  the last child's own `consuming` line (written right after that report: the
  supervisor reads reports late while it is still forking); `first, broker`:
  the same seen from the broker, a passive declare every 50 ms of each queue
  whose child says it consumes, until each has its consumer;
- `existing`: the pool stopped and started again, its queues there now;
  `existing events off`: once more with `[amqp] events: no` (no events
  channel nor stream declare; the side connection stays, for the cancels);
- for each start, the CPU it cost: the children's (all they used until all
  consume), the supervisor's, the node's; and how long the children (summed)
  and the supervisor were runnable but waiting for a CPU (schedstat);
- the supervisor's CPU over `--types-idle` seconds idle, then while
  `--types-tasks` no-op tasks (spread evenly over the N queues) drain;
- `taskqueue status` wall time (the median of 3 calls; as root, it lists
  the vhost's queues with rabbitmqctl too: RABBITMQ_NODENAME names the node);
- PSS (smaps_rollup) of every idle worker child: the median.
Once per repetition, on the idle node: what opening one more connection costs
against one more channel on an open connection (wall, the node's CPU).
bench/types_timeline.py reads a start's log (kept in the workdir) and says
where its time went.
"""
import contextlib
import datetime
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import pika

from taskqueue.host.config import AmqpSettings
from taskqueue.protocol.topology import worker_queue

from common import (BIN, BenchError, Client, Proc, count_records, cpu_seconds, cpu_used,
                    record_dir, wait_until)
from m_footprint import pss_mb

TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")

SETTLE = 3.0           # seconds after the last child is ready before the idle period
POLL = 0.05            # seconds between two looks at the log and at the broker
START_TIMEOUT = 300    # seconds for N children to be consuming
RUNNING = re.compile(r"^(\S+ \S+) taskqueue\[\d+\] supervisor INFO: (bt\d+)#0 pid=(\d+) "
                     r"STARTING -> RUNNING \(ready in ([\d.]+)s\)", re.MULTILINE)
#: A child's own line right after its `ready` report (its consume was answered).
CONSUMING = re.compile(r"^(\S+ \S+) taskqueue\[\d+\] worker (bt\d+)#0 INFO: consuming worker_",
                       re.MULTILINE)
FORKED = re.compile(r"^(\S+ \S+) taskqueue\[\d+\] supervisor INFO: bt\d+#0 pid=- "
                    r"STOPPED -> STARTING", re.MULTILINE)
STARTED = re.compile(r"^(\S+ \S+) taskqueue\[\d+\] supervisor INFO: supervisor started",
                     re.MULTILINE)


#: AMQP connections a worker child holds: its session, its side one (events and cancels).
CONNECTIONS_PER_WORKER = 2
#: File descriptors kept free on the node beyond the workers' (the bench's own
#: connections, status's, the node's files and Erlang distribution).
FD_RESERVE = 400
#: The open-file limit (soft and hard) the bench's node is started with: the
#: shared broker's 1024 is what 200 types ran out of.
NODE_NOFILE = 65536


def _nodes():
    """tests/nodes.py: the one place that knows how to start a RabbitMQ node of our own."""
    if TESTS not in sys.path:
        sys.path.insert(0, TESTS)
    import nodes
    return nodes


def listener_pid(port):
    """The pid of the one process listening on 127.0.0.1:`port` (the node's VM)."""
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True,
                         text=True).stdout
    pids = sorted({int(pid) for pid in re.findall(r"pid=(\d+)", out)})
    if len(pids) != 1:
        raise BenchError(f"cannot tell the node's process on port {port} (pids {pids})")
    return pids[0]


def open_file_limit(pid):
    with open(f"/proc/{pid}/limits") as f:
        return next(int(line.split()[3]) for line in f if line.startswith("Max open files"))


def node_nofile():
    """NODE_NOFILE, or this process's hard limit if lower (this container's root may
    not raise it: 20000 here); the node inherits that hard limit through runuser."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return NODE_NOFILE if hard == resource.RLIM_INFINITY else min(NODE_NOFILE, hard)


@contextlib.contextmanager
def own_node():
    """A RabbitMQ node of the bench's own (tests/nodes.py), started with node_nofile() open
    files; yields (node, its VM's pid). Stopped afterwards, and its VM killed by pid if
    `rabbitmqctl stop` left it running."""
    nodes = _nodes()
    base = tempfile.mkdtemp(prefix="taskqueue-bench-types-node-")
    os.chmod(base, 0o755)      # user rabbitmq reaches its directories under it
    node = nodes.RabbitNode(base, "tqbenchtypes", nofile=node_nofile())
    pid = None
    try:
        node.start()
        pid = listener_pid(node.port)
        print(f"bench: types: node {node.name} on port {node.port}, pid {pid}, open-file "
              f"limit {open_file_limit(pid)}", file=sys.stderr)
        yield node, pid
    finally:
        try:
            node.stop()
        finally:
            if pid is not None and _alive(pid):
                _kill(pid)
            shutil.rmtree(base, ignore_errors=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _kill(pid):
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def check_node_fds(pid, n):
    """Refuse to start N workers when the node's open-file limit cannot take their
    connections (CONNECTIONS_PER_WORKER). Seen on 2026-12-06: 200 types (600 connections,
    3 a worker then) on a broker whose limit was 1024, beside a test run, ran it out of
    descriptors; its Mnesia then failed and the node stopped serving until restarted."""
    limit = open_file_limit(pid)
    used = len(os.listdir(f"/proc/{pid}/fd"))
    needed = CONNECTIONS_PER_WORKER * n + FD_RESERVE
    if used + needed > limit:
        raise BenchError(f"{n} types need about {CONNECTIONS_PER_WORKER * n} broker connections "
                         f"(+{FD_RESERVE} kept free); the bench's node (pid {pid}) has {used} "
                         f"files open of its limit {limit}: pass a smaller --types")


class NodeVhost:
    """A fresh vhost on the bench's node, deleted afterwards."""

    def __init__(self, node, label):
        self.node = node
        self.name = f"tqbench-{os.getpid()}-{time.monotonic_ns()}-{label}"

    def __enter__(self):
        self.node.ctl("add_vhost", self.name)
        self.node.ctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")
        return self

    def __exit__(self, *exc):
        self.node.ctl("delete_vhost", self.name)


class NodeClient(Client):
    """common.Client on the bench's node (its port) rather than the shared broker."""

    def __init__(self, port, vhost):   # as Client.__init__, with the node's port
        self.vhost = vhost
        self.settings = AmqpSettings()
        self.connection = pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", port, virtual_host=vhost,
            credentials=pika.PlainCredentials("guest", "guest")))
        self.channel = self.connection.channel()


def type_names(n):
    return [f"bt{k:03d}" for k in range(n)]


def write_plugins(workdir, n):
    """A directory holding the metadata of a distribution whose N entry points are N
    worker types (importlib.metadata reads any *.dist-info on sys.path)."""
    path = os.path.join(workdir, f"types-{n}-plugins")
    info = os.path.join(path, "taskqueue_bench_types-0.1.0.dist-info")
    os.makedirs(info, exist_ok=True)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\nName: taskqueue-bench-types\nVersion: 0.1.0\n")
    with open(os.path.join(info, "entry_points.txt"), "w") as f:
        f.write("[worker.plugins]\n" + "".join(f"{name} = tqbench.noop:Noop.factory\n"
                                               for name in type_names(n)))
    return path


def epoch(stamp):
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def runqueue_wait(pids):
    """Seconds the live processes among `pids` spent runnable but waiting for a CPU
    (/proc/PID/schedstat's second field), summed: how much of a start was a wait
    for the machine's 2 cores rather than work."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/schedstat") as f:
                total += int(f.read().split()[1]) / 1e9
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    return total


def consuming(proc):
    """{type: epoch of its child's own `consuming` line}, the latest per type."""
    return {name: epoch(stamp) for stamp, name in CONSUMING.findall(proc.log())}


def running(proc):
    """{type: (pid, epoch of its RUNNING line, ready-in seconds)}, the latest per type."""
    return {name: (int(pid), epoch(stamp), float(ready))
            for stamp, name, pid, ready in RUNNING.findall(proc.log())}


def pool(workdir, node, vhost, body, env, label, amqp=""):
    """Start `taskqueue workerpool` on `vhost` of the bench's node (its log kept per start:
    `label`)."""
    path = os.path.join(workdir, f"workerpool-{vhost.name}.ini")
    with open(path, "w") as f:
        f.write(f"{body.rstrip()}\n\n[amqp]\nhost: 127.0.0.1\nport: {node.port}\n"
                f"vhost: {vhost.name}\nqueue_type: quorum\n{amqp}")
    os.chmod(path, 0o600)
    return Proc([os.path.join(BIN, "taskqueue"), "workerpool", "--config", path, "--log",
                 "stderr"], path.replace(".ini", f"-{label}.log"), env=env), path


def start_pool(workdir, node, vhost, config, env, n, client, label, node_pid, amqp=""):
    """Start the pool, wait until its N children are consuming; (pool, config path,
    figures). Three views of "consuming": the supervisor's RUNNING line (when it read
    the child's `ready`: late while it is busy forking the others), the child's own
    `consuming` line (written right after that report), and the broker's consumer
    count. The broker is asked only of the queues whose child says it consumes
    (its consume was answered before that): a passive declare of all N queues every
    50 ms would load the node (and this process) during what it measures."""
    pending, confirmed, broker_done = set(), set(), None
    broker_before = cpu_seconds([node_pid])
    t0 = time.time()
    proc, path = pool(workdir, node, vhost, config, env, label, amqp)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        seen = running(proc)
        pending |= {worker_queue(name) for name in set(seen) | set(consuming(proc))} - confirmed
        for queue in sorted(pending):
            counts = client.counts(queue)
            if counts is not None and counts[1] >= 1:
                pending.discard(queue)
                confirmed.add(queue)
        if len(confirmed) == n and broker_done is None:
            broker_done = time.time()
        if broker_done is not None and len(seen) == n:
            break
        proc.check_alive()
        if time.monotonic() > deadline:
            proc.stop()
            raise BenchError(f"{n} types: {len(seen)} children running after {START_TIMEOUT}s")
        time.sleep(POLL)
    # CPU spent by the start (the children are idle once ready: what they used is
    # their start, fork to consuming, the side connection included if open by now).
    children = cpu_seconds([pid for pid, _, _ in seen.values()])
    supervisor = cpu_seconds([proc.pid])
    waits = (runqueue_wait([pid for pid, _, _ in seen.values()]), runqueue_wait([proc.pid]))
    broker = cpu_used(broker_before, cpu_seconds([node_pid]))
    stamps = sorted(stamp for _, stamp, _ in seen.values())
    own = sorted(consuming(proc).values())
    readies = sorted(ready for _, _, ready in seen.values())
    log_text = proc.log()
    began = STARTED.search(log_text)
    forks = sorted(epoch(stamp) for stamp in FORKED.findall(log_text))
    out = {"all consuming": stamps[-1] - t0,
           "first consuming": stamps[0] - t0,
           "supervisor started": (epoch(began.group(1)) - t0) if began else float("nan"),
           "last fork": forks[-1] - t0 if forks else float("nan"),
           "ready in p50": statistics.median(readies),
           "ready in max": readies[-1],
           "all consuming, broker": broker_done - t0,
           "all consuming, children": own[-1] - t0 if len(own) == n else float("nan"),
           "cpu children": sum(children.values()),
           "cpu supervisor": supervisor.get(proc.pid, float("nan")),
           "cpu broker": broker,
           "runqueue wait children": waits[0],
           "runqueue wait supervisor": waits[1]}
    return proc, path, out


def status_seconds(config_path, env, n):
    """Wall time of one `taskqueue status`. Its exit is 1 (unhealthy) here: a pool
    without a dispatcher leaves the queue `taskqueue` unconsumed; it must show all N."""
    argv = [os.path.join(BIN, "taskqueue"), "status", "--config", config_path]
    started = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **env},
                         timeout=60)
    seconds = time.monotonic() - started
    with open(config_path.replace(".ini", "-status.txt"), "w") as f:   # the last call's
        f.write(f"# exit status {out.returncode}\n{out.stdout}{out.stderr}")
    shown = len(re.findall(r"^  bt\d+#0 ", out.stdout, re.MULTILINE))
    if out.returncode not in (0, 1) or shown != n:
        raise BenchError(f"taskqueue status exited {out.returncode}:\n{out.stdout[-1500:]}"
                         f"{out.stderr[-1500:]}")
    return seconds


def load(proc, client, names, records_path, total):
    """Publish `total` no-op tasks spread over the types' queues; (supervisor CPU %, tasks/s)
    from the first publish to the last record."""
    before, started = cpu_seconds([proc.pid]), time.monotonic()
    for k in range(total):
        client.publish(worker_queue(names[k % len(names)]), json.dumps({"id": f"l{k}"}).encode())
    wait_until(lambda: count_records(records_path) >= total or proc.check_alive(), 300,
               f"{total} tasks over {len(names)} types", interval=POLL)
    seconds = time.monotonic() - started
    cpu = cpu_seconds([proc.pid])[proc.pid] - before[proc.pid]
    return cpu / seconds * 100, total / seconds


def measure_one(workdir, args, node, node_pid, n):
    check_node_fds(node_pid, n)
    names = type_names(n)
    # RABBITMQ_NODENAME: status's rabbitmqctl lists the queues of the bench's node.
    env = {"PYTHONPATH": write_plugins(workdir, n), "RABBITMQ_NODENAME": node.name}
    records_path = record_dir(workdir, f"types{n}")
    status_dir = os.path.join(workdir, f"types-{n}-status-{os.getpid()}-{time.monotonic_ns()}")
    os.mkdir(status_dir)
    config = (f"[DEFAULT]\nworkers: 0\n\n[supervisor]\nstatus_dir: {status_dir}\n\n"
              + "".join(f"[{name}]\nworkers: 1\nrecord_dir: {records_path}\n\n" for name in names))
    row = f"types {n}"
    out = {}
    with NodeVhost(node, f"types{n}") as vhost:
        client = NodeClient(node.port, vhost.name)
        try:
            proc, config_path, first = start_pool(workdir, node, vhost, config, env, n, client,
                                                  "first", node_pid)
            try:
                out[f"{row} all consuming first (s)"] = first["all consuming"]
                out[f"{row} all consuming first, broker (s)"] = first["all consuming, broker"]
                out[f"{row} all consuming first, children (s)"] = first["all consuming, children"]
                out[f"{row} ready in p50 first (s)"] = first["ready in p50"]
                out[f"{row} last fork first (s)"] = first["last fork"]
                for what in ("cpu children", "cpu supervisor", "cpu broker",
                             "runqueue wait children", "runqueue wait supervisor"):
                    out[f"{row} {what} first (s)"] = first[what]
                time.sleep(SETTLE)
                workers = [pid for pid, _, _ in running(proc).values()]
                before, started = cpu_seconds([proc.pid]), time.monotonic()
                time.sleep(args.types_idle)
                idle = (cpu_seconds([proc.pid])[proc.pid] - before[proc.pid]) \
                    / (time.monotonic() - started) * 100
                out[f"{row} supervisor idle cpu (%)"] = idle
                out[f"{row} worker pss (MB)"] = statistics.median(pss_mb(pid) for pid in workers)
                out[f"{row} supervisor pss (MB)"] = pss_mb(proc.pid)
                out[f"{row} status (s)"] = statistics.median(
                    status_seconds(config_path, env, n) for _ in range(3))
                cpu, rate = load(proc, client, names, records_path, args.types_tasks)
                out[f"{row} supervisor load cpu (%)"] = cpu
                out[f"{row} load rate (tasks/s)"] = rate
            finally:
                proc.stop()
            # Again with the queues there; then with `events: no` (no events channel nor
            # stream declare: what the events cost a start).
            # Before each, every consumer of the pool before gone, so that the broker's
            # side sees only the new pool's.
            for label, amqp in (("existing", ""), ("existing events off", "events: no\n")):
                wait_until(lambda: all(not (client.counts(worker_queue(name)) or (0, 0))[1]
                                       for name in names), 30, f"{n} queues without consumers",
                           interval=POLL)
                proc, _, existing = start_pool(workdir, node, vhost, config, env, n, client,
                                               label.replace(" ", "-"), node_pid, amqp)
                try:
                    for view in ("broker", "children"):
                        out[f"{row} all consuming {label}, {view} (s)"] = \
                            existing[f"all consuming, {view}"]
                    for what in ("all consuming", "supervisor started", "first consuming",
                                 "last fork", "ready in p50", "ready in max", "cpu children",
                                 "cpu supervisor", "cpu broker", "runqueue wait children",
                                 "runqueue wait supervisor"):
                        out[f"{row} {what} {label} (s)"] = existing[what]
                finally:
                    proc.stop()
        finally:
            client.close()
    return out


#: Connections (then channels) opened one after the other by connection_costs().
COST_SAMPLES = 50


def connection_costs(node, node_pid):
    """What one more AMQP connection costs against one more channel on a connection
    already open, on the bench's idle node, one at a time: (figures). Wall ms and the
    node's CPU ms per open (+ close), pika's BlockingConnection (PLAIN, loopback)."""
    vhost = "/"
    params = pika.ConnectionParameters("127.0.0.1", node.port, virtual_host=vhost,
                                       credentials=pika.PlainCredentials("guest", "guest"))
    out = {}
    before, started = cpu_seconds([node_pid]), time.monotonic()
    for _ in range(COST_SAMPLES):
        connection = pika.BlockingConnection(params)
        connection.channel()
        connection.close()
    wall = time.monotonic() - started
    out["types connection open wall (ms)"] = wall * 1000 / COST_SAMPLES
    out["types connection open broker cpu (ms)"] = (
        cpu_used(before, cpu_seconds([node_pid])) * 1000 / COST_SAMPLES)
    connection = pika.BlockingConnection(params)
    try:
        before, started = cpu_seconds([node_pid]), time.monotonic()
        for _ in range(COST_SAMPLES):
            connection.channel().close()
        wall = time.monotonic() - started
    finally:
        connection.close()
    out["types channel open wall (ms)"] = wall * 1000 / COST_SAMPLES
    out["types channel open broker cpu (ms)"] = (
        cpu_used(before, cpu_seconds([node_pid])) * 1000 / COST_SAMPLES)
    return out


def measure(workdir, args):
    if os.getuid() != 0:
        raise BenchError("the types measurement needs root (it starts a RabbitMQ node as "
                         "user rabbitmq)")
    out = {}
    with own_node() as (node, pid):
        out.update(connection_costs(node, pid))
        for n in (int(x) for x in args.types.split(",")):
            out.update(measure_one(workdir, args, node, pid, n))
    return out
