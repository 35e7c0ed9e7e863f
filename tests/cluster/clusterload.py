"""The fault suite's task shape for a cluster: marker tasks, a publisher, and
what a run measures (completed, lost, duplicated, the longest stall). Every
task is accounted for by the suites' ledger (tests/accounting.py).
"""
import collections
import os
import re
import shutil
import subprocess
import threading
import time
import uuid

import pika

import clusternet
from accounting import completions, window_bound
from support import TASKQUEUE, Broker, Pool

#: The cluster figures, printed at the end of the run (conftest.py).
FIGURES = {}


def marker_config(record_dir, urls, heartbeat=5, processes=4):
    """A pool of `processes` marker workers (and a dispatcher) on the brokers of `urls`."""
    url = ", ".join(f"amqp://guest:guest@{host}:{port}/%2F?heartbeat={heartbeat}"
                    for host, port in urls)
    return (f"[DEFAULT]\nworkers: 0\n\n[marker]\nworkers: {processes}\n"
            f"record_dir: {record_dir}\n\n[amqp]\nurl: {url}\n")


#: Every queue taskqueue declares in these runs.
QUEUES = ("taskqueue", "taskqueue_dead", "worker_marker", "worker_marker+high")


def assert_quorum_with_three_members(cluster, via=None):
    queues = cluster.queues(via=via)
    for name in QUEUES:
        assert queues[name]["type"] == "quorum", queues[name]
        assert len(queues[name]["members"]) == 3, queues[name]


class NodeBroker(Broker):
    """The tests' own blocking client on one node, maybe inside a namespace."""

    def __init__(self, host, port, netns=None, vhost="/"):
        self.host, self.netns = host, netns
        super().__init__(vhost, port)

    def connect(self):
        with clusternet.inside(self.netns):
            self.connection = pika.BlockingConnection(pika.ConnectionParameters(
                self.host, self.port, virtual_host=self.vhost,
                credentials=pika.PlainCredentials("guest", "guest")))
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()


def publish_all(client, ids, errors, sleep=0):
    """Submit a marker task per id (taking `sleep` s each); errors go to `errors`."""
    work = {"sleep": sleep} if sleep else {}
    try:
        for task_id in ids:
            client.submit("marker", {"id": task_id, **work}, message_id=task_id)
    except Exception as exc:  # reported by the test, which waits for this thread
        errors.append(exc)


class Progress(threading.Thread):
    """Watches completions: the longest time nothing completed while tasks were left.

    Polled every `interval` s, so a stall shorter than that reads as up to one
    interval; the figure is what a user would see of a fault.
    """

    def __init__(self, record_dir, total, interval=0.1):
        super().__init__(daemon=True)
        self.record_dir, self.total, self.interval = record_dir, total, interval
        self.done = 0
        self.longest_stall = 0.0
        self._quit = threading.Event()

    def run(self):
        last_change = None
        while not self._quit.is_set():
            done = len(completions(self.record_dir))
            now = time.monotonic()
            if done != self.done or last_change is None:
                if last_change is not None and self.done > 0:
                    self.longest_stall = max(self.longest_stall, now - last_change)
                last_change = now
                self.done = done
            if self.done >= self.total:
                return
            self._quit.wait(self.interval)

    def stop(self):
        self._quit.set()
        self.join(10)


class NsPool(Pool):
    """A `taskqueue` supervisor on a host in a network namespace (`ip netns exec`
    execs it: the pid is the supervisor's)."""

    def __init__(self, netns, workdir, config, command="run"):
        self.config_path = os.path.join(workdir, f"config-{netns}-{uuid.uuid4().hex[:6]}.ini")
        with open(self.config_path, "w") as f:
            f.write(config)
        os.chmod(self.config_path, 0o640)   # it holds the URL's password
        self.log_path = self.config_path.replace(".ini", ".log")
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", netns, TASKQUEUE, command, "--config", self.config_path,
             "--log", "stderr"], cwd=workdir, stdout=self._log, stderr=subprocess.STDOUT)


def figures(ledger, done, stall, **more):
    return {**ledger.figures(done), "longest stall (s)": round(stall, 2), **more}


def idle(cluster, via=None, queues=("taskqueue", "worker_marker")):
    """True when no task is ready or unacknowledged in `queues`, as a running node sees them."""
    backlog = cluster.backlog(via=via)
    return all(backlog.get(queue, (0, 0)) == (0, 0) for queue in queues)


def held_on(cluster, node=None, via=None):
    """(worker connections, dispatcher connections) of taskqueue's on `node` (None: on
    any node), the broker's view: what a fault that ends them, or voids what they
    settle, can make run twice (accounting.window_bound)."""
    names = [str(name) for on, name in cluster.connections(via=via)
             if (node is None or on is node) and str(name).startswith("taskqueue")]
    dispatchers = sum(1 for name in names if name.startswith("taskqueue dispatcher"))
    return len(names) - dispatchers, dispatchers


def most_extra(held):
    """The duplicates the faults that ended the connections `held` ([(workers,
    dispatchers)], one pair per fault) can cause at most."""
    return sum(window_bound(workers, dispatchers) for workers, dispatchers in held)


def log_figures(pools):
    """What the pools logged: the issue's measure of pika's noise (one line per event)."""
    lines = [line for pool in pools for line in pool.log().splitlines()]
    return {"log lines": len(lines),
            "ERROR lines": sum(1 for line in lines if " ERROR: " in line),
            "traceback lines": sum(1 for line in lines if "Traceback (most recent call last)" in line)}


def keep_logs(pools, label):
    """Copy the pools' logs to $TASKQUEUE_CLUSTER_LOGS (if set), named by `label`:
    the workdir, and its logs, are removed at the end of each test."""
    keep = os.environ.get("TASKQUEUE_CLUSTER_LOGS")
    if not keep:
        return
    os.makedirs(keep, exist_ok=True)
    stem = "".join(c if c.isalnum() else "-" for c in label)
    for n, pool in enumerate(pools):
        shutil.copyfile(pool.log_path, os.path.join(keep, f"{stem}-pool{n}-{os.getpid()}.log"))


#: taskqueue's line for a lost connection: the child's pid, the broker it names, why.
LOST_LINE = re.compile(r"taskqueue\[(\d+)\] .*WARNING: lost the broker (\S+) \((.*)\); "
                       r"reconnecting to ")
#: Why a connection on a node that `rabbitmqctl stop` stops ends.
NODE_SHUTDOWN = "320 CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
#: How else such a connection can end: the node's socket reset before its Connection.Close
#: was read (broker/failover.py says `connection reset`; seen once in a loaded run, 1 of 6 lines).
NODE_GONE = (NODE_SHUTDOWN, "connection reset")
#: The WARNING lines of a child in a node-stop run, all taskqueue's own: a lost
#: connection, a connection attempt to a node that is down (brokers.Route, amqp.open),
#: the dispatcher told once that publishes are nacked while a queue has no leader,
#: and a worker whose task ended after its connection went with the node, so that its
#: ack could not be sent (the broker redelivers the task: done twice, never lost).
#: (The supervisor holds no broker connection: its lines are all taskqueue's.)
OWN_WARNINGS = re.compile(r" (supervisor WARNING: |WARNING: (lost the broker |cannot connect to "
                          r"the broker: |the broker nacks routed messages |delivery \d+ not "
                          r"(acked|nacked|rejected): the connection is gone))")


def lost_lines(pools):
    """[(pid, broker, why)] of every "lost the broker" line of the pools."""
    return [m.groups() for pool in pools
            for m in map(LOST_LINE.search, pool.log().splitlines()) if m]


def log_problems(pools, lost):
    """What is wrong with the pools' logs of a run whose node stops took down `lost`
    ({"host:port": connections on that node just before it stopped}): at the default
    level each of those reads as one line naming its node, and nothing else above INFO
    is anyone's but taskqueue's: no traceback, no pika line (pika's loggers log at
    WARNING or worse there, so any of theirs is a WARNING or ERROR line that is not
    taskqueue's own), no ERROR but a task's own. A connection a stop takes down
    otherwise (RabbitMQ 3.10 closes one that consumes while the queue's leader moves,
    541 INTERNAL_ERROR) has its line too: each child (one connection) writes one at
    most. [] when the log is as the issue wants it."""
    problems = []
    lines = [line for pool in pools for line in pool.log().splitlines()]
    for line in lines:
        if "Traceback" in line:
            problems.append(f"a traceback: {line}")
        elif " ERROR: " in line and " task=" not in line.split(" ERROR: ")[0]:
            problems.append(f"an ERROR that is no task's: {line}")
        elif (" WARNING: " in line or " CRITICAL: " in line) and not OWN_WARNINGS.search(line):
            problems.append(f"a warning that is not taskqueue's own: {line}")
    said = lost_lines(pools)
    stopped = collections.Counter(broker for _, broker, why in said
                                  if any(gone in why for gone in NODE_GONE))
    if stopped != collections.Counter(lost):
        problems.append(f"lines of connections lost to a node's shutdown per broker "
                        f"{dict(stopped)}, connections the stops took down {lost}")
    twice = [pid for pid, n in collections.Counter(pid for pid, _, _ in said).items() if n > 1]
    if twice:
        problems.append(f"more than one lost-connection line from the processes {twice}")
    return problems
