"""3. Latency: sequential tasks, publish -> start of the task, taskqueue (client ->
taskqueue -> dispatcher -> worker_bench -> worker) against bare pika (client ->
queue -> consumer), both on quorum queues, both published without a confirm."""
import json
import os
import sys
import time

from taskqueue.amqp import TASK_QUEUE

from common import BENCH, Client, Proc, Vhost, count_records, record_dir, records, taskqueue, wait_until
from stats import percentile

WARMUP = 20  # first tasks open channels and declare queues: not counted


def envelope(workitem):
    return {"worker_type": "bench", "workitem": workitem}


def sequential(client, queue, path, count, proc):
    """Publish one task, wait until it was recorded, next; return its {id: publish time}."""
    sent = {}
    for n in range(count):
        task_id = f"l{n}"
        body = json.dumps(envelope({"id": task_id}) if queue == TASK_QUEUE
                          else {"id": task_id}).encode()
        sent[task_id] = time.time()
        # The publish time travels in a header too, for anyone reading the messages.
        client.publish(queue, body, content_type="application/json",
                       headers={"x-bench-sent": f"{sent[task_id]:.6f}"})
        wait_until(lambda: count_records(path) > n or proc.check_alive(), 30,
                   f"latency task {n}", interval=0.0005)
    return sent


def run_one(workdir, label, count, start, queue):
    with Vhost(label) as vhost:
        path = record_dir(workdir, label)
        client = Client(vhost.name)
        client.declare(queue)
        proc, ready = start(vhost, path)
        try:
            wait_until(lambda: (client.counts(ready[0]) or (0, 0))[1] >= ready[1]
                       or proc.check_alive(), 60, f"{label} consuming")
            sent = sequential(client, queue, path, count + WARMUP, proc)
        finally:
            client.close()
            proc.stop()
    started = records(path)
    delays = sorted((started[i] - sent[i]) * 1000 for i in list(sent)[WARMUP:])
    return percentile(delays, 50), percentile(delays, 99)


def start_taskqueue(workdir, vhost, path):
    config = f"[DEFAULT]\nworkers: 0\n\n[bench]\nworkers: 1\nrecord_dir: {path}\n"
    return taskqueue("run", vhost.name, config, workdir), ("worker_bench", 1)


def start_bare(workdir, vhost, path):
    argv = [sys.executable, os.path.join(BENCH, "bare_consumer.py"), vhost.url, "bare", path]
    return Proc(argv, os.path.join(workdir, f"bare-{vhost.name}.log")), ("bare", 1)


def measure(workdir, args):
    n = args.latency_tasks
    tq50, tq99 = run_one(workdir, "latency-tq", n, lambda v, p: start_taskqueue(workdir, v, p),
                         TASK_QUEUE)
    bare50, bare99 = run_one(workdir, "latency-bare", n, lambda v, p: start_bare(workdir, v, p),
                             "bare")
    return {"latency taskqueue p50": tq50, "latency taskqueue p99": tq99,
            "latency bare pika p50": bare50, "latency bare pika p99": bare99}
