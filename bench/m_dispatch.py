"""1. Routing rate: N envelopes preloaded into `taskqueue`, routed to `worker_bench`
by 1 or 2 dispatchers, against a bare pika shovel doing the same hop."""
import json
import os
import sys
import time

from taskqueue.protocol.topology import TASK_QUEUE, worker_queue

from common import BENCH, Client, Proc, Vhost, taskqueue, wait_until

DEST = worker_queue("bench")
PREFETCH = 256  # the dispatcher's default [dispatcher] prefetch


def preload(client, queue, count):
    """Fill `queue` with `count` persistent envelopes; return once the broker holds them all."""
    client.declare(queue)
    for n in range(count):
        body = json.dumps({"worker_type": "bench", "workitem": {"id": f"d{n}"}}).encode()
        client.publish(queue, body, content_type="application/json")
    wait_until(lambda: (client.counts(queue) or (0,))[0] >= count, 120, f"{count} preloaded")


def time_fill(client, proc, count, timeout):
    """Seconds from the first message in DEST to DEST holding `count`; polled every 10 ms."""
    first = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = (client.counts(DEST) or (0,))[0]
        now = time.monotonic()
        if held and first is None:
            first = now
        if held >= count:
            return now - first, now - proc.started
        proc.check_alive()
        time.sleep(0.01)
    raise TimeoutError(f"{DEST} did not reach {count} in {timeout}s")


def run_one(workdir, label, count, start):
    """Preload, start the router (`start(vhost)` returns a Proc), time the fill; msgs/s."""
    with Vhost(label) as vhost:
        client = Client(vhost.name)
        preload(client, TASK_QUEUE, count)
        client.declare(DEST)
        proc = start(vhost)
        try:
            seconds, since_start = time_fill(client, proc, count, timeout=max(60, count / 200))
        finally:
            proc.stop()
            client.close()
    return count / seconds, count / since_start


def shovel(workdir, count):
    def start(vhost):
        return Proc([sys.executable, os.path.join(BENCH, "shovel.py"), vhost.url, TASK_QUEUE,
                     DEST, str(PREFETCH), str(count), "600"],
                    os.path.join(workdir, f"shovel-{vhost.name}.log"))
    return run_one(workdir, "shovel", count, start)


def dispatchers(workdir, count, processes):
    config = f"[DEFAULT]\nworkers: 0\n\n[dispatcher]\nworkers: {processes}\nprefetch: {PREFETCH}\n"
    return run_one(workdir, f"disp{processes}", count,
                   lambda vhost: taskqueue("dispatcher", vhost.name, config, workdir))


def measure(workdir, args):
    out = {}
    for key, run in (("shovel", lambda: shovel(workdir, args.preload)),
                     ("dispatcher x1", lambda: dispatchers(workdir, args.preload, 1)),
                     ("dispatcher x2", lambda: dispatchers(workdir, args.preload, 2))):
        rate, rate_from_start = run()
        out[f"route {key}"] = rate
        out[f"route {key} (from process start)"] = rate_from_start
    return out
