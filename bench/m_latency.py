"""3. Latency: sequential tasks, each published once the previous one started,
publish -> start of the task, one worker process, each system with its own client
(none waits for a publisher confirm). taskqueue's dispatcher path (client ->
taskqueue -> dispatcher -> worker_bench -> worker) and one-hop path (client ->
exchange -> worker_bench -> worker), on quorum and classic queues; bare pika
(client -> a quorum queue -> bare_consumer.py) as the floor; Dramatiq (classic)
and Celery (classic and quorum)."""
import json
import os
import subprocess
import sys

from taskqueue.amqp import worker_queue

import onehop
from common import BENCH, Client, Proc, Vhost, record_dir, records, wait_until
from m_e2e import PEERS, peer_env, start_celery, start_dramatiq, start_taskqueue
from stats import percentile

WARMUP = 20  # first tasks open channels and declare queues: not counted


def run_one(workdir, label, kind, count, start, queue_type):
    with Vhost(label) as vhost:
        path = record_dir(workdir, label)
        client = Client(vhost.name)
        if kind == "bare":
            client.declare("bare")
        proc, queues = start(vhost, path)
        try:
            wait_until(lambda: all((client.counts(q) or (0, 0))[1] >= n for q, n in queues)
                       or proc.check_alive(), 60, f"{label} consuming")
            if kind == "taskqueue-onehop":
                onehop.ensure_bound(client, worker_queue("bench"), "bench")
            out = subprocess.run(
                [sys.executable, os.path.join(PEERS, "send.py"), "--sequential", kind,
                 str(count + WARMUP), "l"], env={**os.environ, **peer_env(vhost, path, queue_type)},
                capture_output=True, text=True, timeout=120 + count, check=True)
            sent = json.loads(out.stdout.strip().splitlines()[-1])
        finally:
            client.close()
            proc.stop()
    started = records(path)
    delays = sorted((started[i] - sent[i]) * 1000 for i in list(sent)[WARMUP:])
    return percentile(delays, 50), percentile(delays, 99)


def start_bare(workdir, vhost, path):
    argv = [sys.executable, os.path.join(BENCH, "bare_consumer.py"), vhost.url, "bare", path]
    return Proc(argv, os.path.join(workdir, f"bare-{vhost.name}.log")), [("bare", 1)]


def systems(workdir):
    """(row name, sender kind, queue type, start(vhost, records path)); one worker process each."""
    def tq(queue_type):
        return lambda v, p: start_taskqueue(workdir, v, p, queue_type, workers=1)
    return [
        ("taskqueue", "taskqueue", "quorum", tq("quorum")),
        ("taskqueue one-hop", "taskqueue-onehop", "quorum", tq("quorum")),
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
    out = {}
    only = set(args.rows.split(",")) if getattr(args, "rows", None) else None
    for name, kind, queue_type, start in systems(workdir):
        if only is not None and name not in only:
            continue
        p50, p99 = run_one(workdir, "latency-" + name.replace(" ", "-"), kind,
                           args.latency_tasks, start, queue_type)
        out[f"latency {name} p50"], out[f"latency {name} p99"] = p50, p99
    return out
