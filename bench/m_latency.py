"""3. Latency: sequential tasks, each published once the previous one started,
publish -> start of the task, one worker process, each system with its own client
(none waits for a publisher confirm). taskqueue's dispatcher path (client ->
taskqueue -> dispatcher -> worker_bench -> worker) and one-hop path (client ->
exchange -> worker_bench -> worker), on quorum and classic queues; bare pika
(client -> a quorum queue -> bare_consumer.py) as the floor; Dramatiq (classic)
and Celery (classic and quorum).

All the systems run at once, idle but for the one task in flight: the bench
sends one task to each system in turn (peers/send.py --stepped), so every
system's figures come from the same stretch of time, and a ratio compares
them under the same load on the machine."""
import contextlib
import os
import subprocess
import sys

from taskqueue.protocol.topology import worker_queue

import onehop
from common import BenchError, BENCH, Client, Proc, Vhost, record_dir, records, wait_until
from m_e2e import PEERS, peer_env, start_celery, start_dramatiq, start_taskqueue
from stats import percentile

WARMUP = 20  # first tasks open channels and declare queues: not counted


class System:
    """One system under test: its vhost, its processes and its stepped sender."""

    def __init__(self, stack, workdir, name, kind, queue_type, start, count):
        self.name, self.kind = name, kind
        label = "latency-" + name.replace(" ", "-")
        vhost = stack.enter_context(Vhost(label))
        self.path = record_dir(workdir, label)
        self.client = Client(vhost.name)
        stack.callback(self.client.close)
        if kind == "bare":
            self.client.declare("bare")
        self.proc, self.queues = start(vhost, self.path)
        stack.callback(self.proc.stop)
        self.sender = subprocess.Popen(
            [sys.executable, os.path.join(PEERS, "send.py"), "--stepped", kind, str(count), "l"],
            env={**os.environ, **peer_env(vhost, self.path, queue_type)},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        stack.callback(self._stop_sender)
        self.sent = {}

    def ready(self):
        self.proc.check_alive()
        return all((self.client.counts(q) or (0, 0))[1] >= n for q, n in self.queues)

    def step(self):
        """One task: publish, wait until it started; record its publish time."""
        self.sender.stdin.write("\n")
        self.sender.stdin.flush()
        line = self.sender.stdout.readline().split()
        if len(line) != 2:
            self.proc.check_alive()
            raise BenchError(f"latency {self.name}: the sender stopped (see its traceback above)")
        self.sent[line[0]] = float(line[1])

    def _stop_sender(self):
        self.sender.stdin.close()
        try:
            self.sender.wait(30)
        except subprocess.TimeoutExpired:
            self.sender.kill()
            self.sender.wait()

    def percentiles(self):
        started = records(self.path)
        delays = sorted((started[i] - self.sent[i]) * 1000 for i in list(self.sent)[WARMUP:])
        return percentile(delays, 50), percentile(delays, 99)


def start_bare(workdir, vhost, path):
    argv = [sys.executable, os.path.join(BENCH, "bare_consumer.py"), vhost.url, "bare", path]
    return Proc(argv, os.path.join(workdir, f"bare-{vhost.name}.log")), [("bare", 1)]


def systems(workdir):
    """(row name, sender kind, queue type, start(vhost, records path)); one worker process each."""
    def tq(queue_type, amqp=""):
        return lambda v, p: start_taskqueue(workdir, v, p, queue_type, workers=1, amqp=amqp)
    return [
        ("taskqueue", "taskqueue", "quorum", tq("quorum")),
        ("taskqueue one-hop", "taskqueue-onehop", "quorum", tq("quorum")),
        ("taskqueue one-hop no events", "taskqueue-onehop", "quorum", tq("quorum", "events: no\n")),
        ("taskqueue classic", "taskqueue", "classic", tq("classic")),
        ("taskqueue one-hop classic", "taskqueue-onehop", "classic", tq("classic")),
        ("bare pika", "bare", "quorum", lambda v, p: start_bare(workdir, v, p)),
        ("dramatiq", "dramatiq", "classic",
         lambda v, p: start_dramatiq(workdir, v, p, threads=1, processes=1)),
        ("celery", "celery", "classic",
         lambda v, p: start_celery(workdir, v, p, "classic", workers=1)),
        ("celery quorum", "celery", "quorum",
         lambda v, p: start_celery(workdir, v, p, "quorum", workers=1)),
    ]


def measure(workdir, args):
    only = set(args.rows.split(",")) if getattr(args, "rows", None) else None
    chosen = [s for s in systems(workdir) if only is None or s[0] in only]
    count = args.latency_tasks + WARMUP
    out = {}
    with contextlib.ExitStack() as stack:
        running = [System(stack, workdir, *s, count) for s in chosen]
        for system in running:
            wait_until(system.ready, 60, f"latency {system.name} consuming")
            if system.kind == "taskqueue-onehop":
                onehop.ensure_bound(system.client, worker_queue("bench"), "bench")
        for _ in range(count):
            for system in running:
                system.step()
    for system in running:
        p50, p99 = system.percentiles()
        out[f"latency {system.name} p50"], out[f"latency {system.name} p99"] = p50, p99
    return out
