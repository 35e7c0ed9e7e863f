"""2. End-to-end throughput: N no-op tasks published as fast as one client can
(workers already consuming), from the first publish to the last task's start
(a no-op: start ~ completion), through 2 worker processes of each system."""
import json
import os
import resource
import subprocess
import sys

from taskqueue.protocol.topology import worker_queue

import onehop
from common import (BENCH, BIN, BenchError, Client, Proc, Vhost, broker_pids, count_records, cpu_seconds,
                    cpu_used, record_dir, records, session_pids, taskqueue, wait_until,
                    worker_pids)

PEERS = os.path.join(BENCH, "peers")


def peer_env(vhost, records_path, queue_type="classic"):
    return {"BENCH_BROKER_URL": vhost.url, "BENCH_RECORD_DIR": records_path,
            "BENCH_QUEUE_TYPE": queue_type, "PYTHONPATH": PEERS}


def start_taskqueue(workdir, vhost, records_path, queue_type, options="", workers=2, amqp=""):
    config = (f"[DEFAULT]\nworkers: 0\n\n[bench]\nworkers: {workers}\n"
              f"record_dir: {records_path}\n{options}")
    proc = taskqueue("run", vhost.name, config, workdir, queue_type=queue_type, amqp=amqp)
    return proc, [("taskqueue", 1), ("worker_bench", workers)]


def start_onehop(workdir, vhost, records_path, queue_type, workers=2, amqp=""):
    """taskqueue as for the dispatcher path; its clients publish to onehop.EXCHANGE."""
    return start_taskqueue(workdir, vhost, records_path, queue_type, workers=workers, amqp=amqp)


def start_celery(workdir, vhost, records_path, queue_type="classic", workers=2):
    argv = [os.path.join(BIN, "celery"), "-A", "celery_app", "worker", "-P", "prefork",
            "-c", str(workers), "--without-gossip", "--without-mingle", "--without-heartbeat",
            "-l", "warning"]
    proc = Proc(argv, os.path.join(workdir, f"celery-{vhost.name}.log"),
                env=peer_env(vhost, records_path, queue_type), cwd=PEERS)
    return proc, [("celery", 1)]


def start_dramatiq(workdir, vhost, records_path, threads, processes=2):
    argv = [os.path.join(BIN, "dramatiq"), "-p", str(processes), "-t", str(threads),
            "dramatiq_app"]
    proc = Proc(argv, os.path.join(workdir, f"dramatiq-{vhost.name}.log"),
                env=peer_env(vhost, records_path), cwd=PEERS)
    return proc, [("default", processes)]


def workers_of(kind, proc):
    """The processes that consume and run the tasks: taskqueue's `bench` children (not
    the supervisor, not the dispatcher), dramatiq's worker processes (not its master).
    None for celery, whose master consumes and whose pool children run the tasks."""
    if kind.startswith("taskqueue"):
        return worker_pids(proc.log())
    if kind in ("dramatiq", "bare"):   # bare: bare_consumer.py's forked consumers
        return [pid for pid in session_pids(proc.pid) if pid != proc.pid]
    return None


def consuming(client, proc, queues):
    proc.check_alive()
    return all((client.counts(q) or (0, 0))[1] >= n for q, n in queues)


def run_one(workdir, label, kind, count, start, queue_type="classic", client_argv=None):
    """Start the system, wait until it consumes, send, wait for every record: tasks/s,
    the client's publish rate, and CPU microseconds per task of the system's own
    processes, of the broker, of the client, and of the worker processes alone.
    `client_argv(vhost)`: the client's argv after the interpreter (default: peers/send.py
    KIND COUNT LABEL), a program speaking send.py's protocol."""
    with Vhost(label) as vhost:
        path = record_dir(workdir, label)
        proc, queues = start(vhost, path)
        client = Client(vhost.name)
        try:
            wait_until(lambda: consuming(client, proc, queues), 60, f"{label} consuming")
            if kind == "taskqueue-onehop":
                onehop.ensure_bound(client, worker_queue("bench"), "bench")
            own, broker = session_pids(proc.pid), broker_pids()
            workers = workers_of(kind, proc) or []
            cpu_before = (cpu_seconds(own), cpu_seconds(broker), _children_cpu(),
                          cpu_seconds(workers))
            argv = (client_argv(vhost) if client_argv else
                    [os.path.join(PEERS, "send.py"), kind, str(count), label])
            sender = subprocess.Popen(
                [sys.executable, *argv],
                env={**os.environ, **peer_env(vhost, path, queue_type)},
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            try:
                line = sender.stdout.readline()   # once it has published them all
                if not line:
                    raise BenchError(f"{label}: the client exited {sender.wait()} before "
                                     f"publishing {count} tasks (its traceback is above)")
                times = json.loads(line)
                wait_until(lambda: count_records(path) >= count or proc.check_alive(),
                           max(120, count / 20), f"{count} {label} tasks done", interval=0.05)
                cpu_after = [cpu_seconds(own), cpu_seconds(broker), None, cpu_seconds(workers)]
            finally:
                sender.stdin.close()   # now it may close its connection, and exit
                try:
                    sender.wait(60)
                except subprocess.TimeoutExpired:
                    sender.kill()
                    sender.wait()
            if sender.returncode:
                raise BenchError(f"{label}: the client exited {sender.returncode} (its "
                                 f"traceback is above)")
            cpu_after[2] = _children_cpu()   # the client's, once it was reaped
        finally:
            try:
                proc.stop()
            finally:
                client.close()
    last = max(records(path).values())
    own_cpu, broker_cpu, worker_cpu = (cpu_used(cpu_before[i], cpu_after[i]) for i in (0, 1, 3))
    cpu = {"own processes": own_cpu, "broker": broker_cpu,
           "client": cpu_after[2] - cpu_before[2]}
    if workers:
        cpu["workers"] = worker_cpu
    cpu = {what: seconds * 1e6 / count for what, seconds in cpu.items()}
    return count / (last - times["start"]), count / (times["end"] - times["start"]), cpu


def _children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def systems(workdir):
    """(row name, sender kind, queue type, start(vhost, records path)) of every e2e row.
    taskqueue's `dispatcher path`: envelopes to the queue `taskqueue` (two hops);
    `one-hop`: workitems to onehop.EXCHANGE with the type as routing key."""
    def tq(queue_type, options=""):
        return lambda v, p: start_taskqueue(workdir, v, p, queue_type, options)

    def onehop_(queue_type, amqp=""):
        return lambda v, p: start_onehop(workdir, v, p, queue_type, amqp=amqp)

    return [
        ("taskqueue", "taskqueue", "quorum", tq("quorum")),
        ("taskqueue classic", "taskqueue", "classic", tq("classic")),
        ("taskqueue one-hop", "taskqueue-onehop", "quorum", onehop_("quorum")),
        ("taskqueue one-hop classic", "taskqueue-onehop", "classic", onehop_("classic")),
        # Task events off: what the events stream costs (issue 22's budget: >= 0.85x).
        ("taskqueue one-hop no events", "taskqueue-onehop", "quorum",
         onehop_("quorum", "events: no\n")),
        # One task at a time and nothing in advance: the round trip per task shows.
        ("taskqueue lookahead 0", "taskqueue", "quorum", tq("quorum", "lookahead: 0\n")),
        ("celery", "celery", "classic", lambda v, p: start_celery(workdir, v, p, "classic")),
        ("celery quorum", "celery", "quorum", lambda v, p: start_celery(workdir, v, p, "quorum")),
        ("dramatiq t1", "dramatiq", "classic", lambda v, p: start_dramatiq(workdir, v, p, 1)),
        ("dramatiq t8", "dramatiq", "classic", lambda v, p: start_dramatiq(workdir, v, p, 8)),
    ]


def measure(workdir, args):
    n = args.tasks
    only = set(args.rows.split(",")) if getattr(args, "rows", None) else None
    out = {}
    for name, kind, queue_type, start in systems(workdir):
        if only is not None and name not in only:
            continue
        rate, publish_rate, cpu = run_one(workdir, name.replace(" ", "-"), kind, n, start,
                                          queue_type)
        out[f"e2e {name}"] = rate
        out[f"e2e {name} (publish rate)"] = publish_rate
        for what, us in cpu.items():
            out[f"cpu/task {name}: {what}"] = us
    return out
