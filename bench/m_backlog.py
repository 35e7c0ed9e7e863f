"""Backlog: how a pool drains a queue that already holds N tasks, and whether any
process's memory grows with N.

For each queue type (classic, quorum) and each size of --backlog (10 000, 100 000,
1 000 000), in a vhost of its own: `worker_bench` is declared as taskqueue declares
it and filled with N one-hop tasks (the workitem, the `worker_type` header, a
message id, persistent) by preload.py (confirms in a window; not measured). Then a
`taskqueue run` starts (1 dispatcher, 2 `bench` workers, as the e2e rows) and drains
it. The drain rate is N over the time from the first task's start to the last's
(the bench plugin's records). Every RUNNING process of the pool (supervisor,
dispatcher, each worker) and the broker are sampled for RSS (/proc/PID/status,
every SAMPLE seconds) during the drain; a process's growth is its largest sample
less its first (taken once the supervisor's log names every child RUNNING, a
fraction of a second into the drain: start-up is not growth). The broker's RSS and the queue's own memory (rabbitmqctl
list_queues memory) after the preload say what holding the backlog costs it.
"""
import os
import re
import subprocess
import time

import pika

from taskqueue.host.config import AmqpSettings
from taskqueue.protocol.topology import worker_queue

from common import BenchError, Client, Vhost, broker_pids, record_dir, taskqueue, wait_until
from preload import preload

QUEUE_TYPES = ("classic", "quorum")
#: Seconds between two RSS samples (and two looks at the records' size).
SAMPLE = 0.1
#: Task ids are this wide, so that every record line is LINE bytes and the records'
#: size counts the tasks started without reading them.
ID_WIDTH = 8
LINE = ID_WIDTH + 1 + len(f"{time.time():.6f}") + 1
#: Seconds without a new record before the drain is given up as stalled.
STALL = 30


def message(n):
    body = b'{"id": "%0*d"}' % (ID_WIDTH, n)
    return body, pika.BasicProperties(delivery_mode=2, content_type="application/json",
                                      message_id=f"b{n:0{ID_WIDTH}d}",
                                      headers={"worker_type": "bench"})


def rss_mb(pid):
    """Resident set size of `pid` in MB, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def pool_processes(proc):
    """{name: pid} of the pool's processes: `supervisor`, and each child RUNNING by its
    slot (`bench#0`, `dispatcher#0`, ...) as the supervisor's log names them (the last
    start of each slot: a replaced child is a new process, sampled from its start)."""
    found = {"supervisor": proc.pid}
    for slot, pid in re.findall(r"(\w+#\d+) pid=(\d+) STARTING -> RUNNING", proc.log()):
        found[slot] = int(pid)
    return found


def records_started(path):
    """Tasks started so far: the records' size over LINE (no file is read)."""
    return sum(os.path.getsize(os.path.join(path, name)) for name in os.listdir(path)) // LINE


def first_last(path):
    """(lines, earliest start, latest start) of every record in `path`."""
    lines, first, last = 0, float("inf"), 0.0
    for name in os.listdir(path):
        with open(os.path.join(path, name), "rb") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and line.endswith(b"\n"):
                    started = float(parts[1])
                    lines += 1
                    first, last = min(first, started), max(last, started)
    return lines, first, last


def queue_memory_mb(vhost, queue):
    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "--no-table-headers",
                          "name", "memory"], capture_output=True, text=True, timeout=60).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == queue:
            return int(parts[1]) / 2**20
    raise BenchError(f"rabbitmqctl list_queues shows no {queue} in {vhost}")


#: The pool's children the drain waits for before its first sample (its start-up,
#: the imports, is not growth).
CHILDREN = ("bench#0", "bench#1", "dispatcher#0")


def drain(proc, path, count, broker, series):
    """Sample RSS from when every child of CHILDREN runs until `count` tasks started:
    {process name: (first, largest) MB}. Every sample also goes to the file `series`
    (tab-separated: seconds, tasks started, process, pid, RSS MB), to see how it grew."""
    wait_until(lambda: all(c in pool_processes(proc) for c in CHILDREN) or proc.check_alive(),
               60, f"{', '.join(CHILDREN)} running", interval=0.01)
    samples = {}
    began = progressed = time.monotonic()
    deadline = began + max(60, count / 2000)
    progress = -1
    with open(series, "w") as out:
        while True:
            proc.check_alive()
            started = records_started(path)
            now = time.monotonic()
            processes = {**pool_processes(proc),
                         **{f"broker{i}": pid for i, pid in enumerate(broker)}}
            for name, pid in processes.items():
                rss = rss_mb(pid)
                if rss is not None:
                    first, top = samples.get((name, pid), (rss, rss))
                    samples[(name, pid)] = (first, max(top, rss))
                    out.write(f"{now - began:.2f}\t{started}\t{name}\t{pid}\t{rss:.3f}\n")
            if started >= count:
                return {name: value for (name, _), value in samples.items()}
            if started > progress:
                progress, progressed = started, now
            if now - progressed > STALL or now > deadline:
                raise BenchError(f"backlog: {started} of {count} tasks started, none for "
                                 f"{now - progressed:.0f}s (deadline {deadline - now:.0f}s)")
            time.sleep(SAMPLE)


def run_one(workdir, queue_type, count):
    label = f"backlog-{queue_type}-{count}"
    out = {}
    prefix = f"backlog {queue_type} {count}"
    with Vhost(label) as vhost:
        path = record_dir(workdir, label)
        client = Client(vhost.name, AmqpSettings(queue_type=queue_type))
        try:
            client.declare(worker_queue("bench"))
        finally:
            client.close()
        broker = broker_pids()
        broker_before = sum(rss_mb(pid) or 0 for pid in broker)
        started = time.monotonic()
        preload(vhost.name, worker_queue("bench"), count, message, max(60, count / 2000))
        out[f"{prefix} preload"] = count / (time.monotonic() - started)
        out[f"{prefix} broker rss held"] = sum(rss_mb(pid) or 0 for pid in broker) - broker_before
        out[f"{prefix} queue memory"] = queue_memory_mb(vhost.name, worker_queue("bench"))
        config = f"[DEFAULT]\nworkers: 0\n\n[bench]\nworkers: 2\nrecord_dir: {path}\n"
        proc = taskqueue("run", vhost.name, config, workdir, queue_type=queue_type)
        try:
            rss = drain(proc, path, count, broker, os.path.join(workdir, f"rss-{label}.tsv"))
        finally:
            proc.stop()
    lines, first, last = first_last(path)
    if lines < count:
        raise BenchError(f"{label}: {lines} records of {count} tasks")
    out[f"{prefix} drain"] = count / (last - first)
    growth = {name: top - first for name, (first, top) in rss.items()}
    workers = [g for name, g in growth.items() if name.startswith("bench#")]
    out[f"{prefix} rss growth supervisor"] = growth.get("supervisor", 0.0)
    out[f"{prefix} rss growth worker"] = max(workers) if workers else 0.0
    if "dispatcher#0" in growth:
        out[f"{prefix} rss growth dispatcher"] = growth["dispatcher#0"]
    out[f"{prefix} rss growth max"] = max(g for name, g in growth.items()
                                         if not name.startswith("broker"))
    out[f"{prefix} rss growth broker"] = sum(g for name, g in growth.items()
                                             if name.startswith("broker"))
    return out


def measure(workdir, args):
    sizes = sorted(int(n) for n in args.backlog.split(","))
    out = {}
    for queue_type in args.backlog_queues.split(","):
        if queue_type not in QUEUE_TYPES:
            raise BenchError(f"--backlog-queues: {queue_type!r} is not one of "
                             f"{', '.join(QUEUE_TYPES)}")
        for count in sizes:
            out.update(run_one(workdir, queue_type, count))
        small, large = sizes[0], sizes[-1]
        if large > small:   # within one repetition: the same machine, the same broker
            out[f"ratio backlog {queue_type} drain {large} / {small}"] = (
                out[f"backlog {queue_type} {large} drain"] / out[f"backlog {queue_type} {small} drain"])
    return out
