"""The fault suite's task shape for a cluster: marker tasks, a publisher, and
what a run measures (completed, lost, duplicated, the longest stall).
"""
import collections
import os
import subprocess
import threading
import time
import uuid

import pika

import clusternet
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
QUEUES = ("taskqueue", "taskqueue_dead", "worker_marker")


def assert_quorum_with_three_members(cluster, via=None):
    queues = cluster.queues(via=via)
    for name in QUEUES:
        assert queues[name]["type"] == "quorum", queues[name]
        assert len(queues[name]["members"]) == 3, queues[name]


def completions(record_dir):
    """How many times each task id was completed (the marker plugin's files)."""
    counts = collections.Counter()
    for name in os.listdir(record_dir):
        if name.endswith(".done"):
            with open(os.path.join(record_dir, name)) as f:
                counts.update(line for line in f.read().split("\n") if line)
    return counts


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


def account(client, ids, record_dir):
    """(completions, dead-lettered ids, lost ids) once every task is accounted for
    or nothing changes any more."""
    dead = set()
    for props, _ in client.drain("taskqueue_dead"):
        dead.add(props.message_id)
    done = completions(record_dir)
    return done, dead, set(ids) - set(done) - dead


def figures(total, done, dead, lost, stall, **more):
    return {"published": total, "completed": len(done), "dead-lettered": len(dead),
            "lost": len(lost), "duplicated": sum(1 for c in done.values() if c > 1),
            "longest stall (s)": round(stall, 2), **more}


def log_figures(pools):
    """What the pools logged: the issue's measure of pika's noise (one line per event)."""
    lines = [line for pool in pools for line in pool.log().splitlines()]
    return {"log lines": len(lines),
            "ERROR lines": sum(1 for line in lines if " ERROR: " in line),
            "traceback lines": sum(1 for line in lines if "Traceback (most recent call last)" in line)}
