"""7. The broker's own limit: what a bare pika publisher (persistent, every message
confirmed, a window in flight: bare_publisher.py) and 2 bare pika consumer processes
(manual ack, taskqueue's prefetch: bare_consumer.py) push through a queue declared
as taskqueue declares `worker_bench`, on the same broker; and taskqueue fed by the
same publisher, one hop and the dispatcher path, at the same durability. Classic
and quorum. End to end as the e2e rows (m_e2e.run_one): first publish -> last
task started (recorded), with CPU per task split the same way."""
import os
import sys

from taskqueue.host.config import AmqpSettings
from taskqueue.protocol.topology import TASK_QUEUE, worker_queue
from taskqueue.runtime.intake import AHEAD_PREFETCH

import onehop
from common import BENCH, Client, Proc
from m_e2e import run_one, start_onehop, start_taskqueue

QUEUE = worker_queue("bench")
#: Consumer processes: as many as the e2e rows' `bench` workers.
PROCESSES = 2


def start_bare(workdir, vhost, records_path, queue_type, processes=PROCESSES):
    """Declare QUEUE as taskqueue would (same type, same arguments), start the consumers."""
    client = Client(vhost.name, AmqpSettings(queue_type=queue_type))
    try:
        client.declare(QUEUE)
    finally:
        client.close()
    argv = [sys.executable, os.path.join(BENCH, "bare_consumer.py"),
            vhost.url, QUEUE, records_path, str(AHEAD_PREFETCH), str(processes)]
    proc = Proc(argv, os.path.join(workdir, f"bare-{vhost.name}.log"))
    return proc, [(QUEUE, processes)]


def publisher(count, label, target, size=0):
    """The client argv for run_one: bare_publisher.py to `target` (bare, one-hop, dispatcher)."""
    script = os.path.join(BENCH, "bare_publisher.py")
    route = {"bare": ("", QUEUE, ""), "one-hop": (onehop.EXCHANGE, "bench", "bench"),
             "dispatcher": ("", TASK_QUEUE, "envelope:bench")}[target]
    exchange, routing_key, worker_type = route

    def argv(vhost):
        tail = [str(size), worker_type] if worker_type else [str(size)]
        return [script, vhost.url, exchange, routing_key, str(count), label, *tail]
    return argv


def rows(workdir, queue_type):
    """(row name, run_one kind, start(vhost, records path), publisher target)."""
    suffix = " classic" if queue_type == "classic" else ""
    return [
        (f"bare{suffix}", "bare",
         lambda v, p: start_bare(workdir, v, p, queue_type), "bare"),
        (f"taskqueue one-hop confirmed{suffix}", "taskqueue-onehop",
         lambda v, p: start_onehop(workdir, v, p, queue_type), "one-hop"),
        (f"taskqueue confirmed{suffix}", "taskqueue",
         lambda v, p: start_taskqueue(workdir, v, p, queue_type), "dispatcher"),
    ]


def measure(workdir, args):
    n = args.tasks
    out = {}
    for queue_type in ("quorum", "classic"):
        for name, kind, start, target in rows(workdir, queue_type):
            label = name.replace(" ", "-")
            rate, publish_rate, cpu = run_one(workdir, label, kind, n, start, queue_type,
                                              client_argv=publisher(n, label, target))
            out[f"e2e {name}"] = rate
            out[f"e2e {name} (publish rate)"] = publish_rate
            for what, us in cpu.items():
                out[f"cpu/task {name}: {what}"] = us
    return out
