"""2. End-to-end throughput: N no-op tasks published as fast as one client can
(workers already consuming), from the first publish to the last task's start
(a no-op: start ~ completion), through 2 worker processes of each system."""
import json
import os
import resource
import subprocess
import sys

from common import (BENCH, BIN, Client, Proc, Vhost, broker_pids, count_records, cpu_seconds, cpu_used,
                    record_dir, records, session_pids, taskqueue, wait_until)

PEERS = os.path.join(BENCH, "peers")


def peer_env(vhost, records_path):
    return {"BENCH_BROKER_URL": vhost.url, "BENCH_RECORD_DIR": records_path,
            "PYTHONPATH": PEERS}


def start_taskqueue(workdir, vhost, records_path, queue_type, options=""):
    config = f"[DEFAULT]\nworkers: 0\n\n[bench]\nworkers: 2\nrecord_dir: {records_path}\n{options}"
    proc = taskqueue("run", vhost.name, config, workdir, queue_type=queue_type)
    return proc, [("taskqueue", 1), ("worker_bench", 2)]


def start_celery(workdir, vhost, records_path):
    argv = [os.path.join(BIN, "celery"), "-A", "celery_app", "worker", "-P", "prefork", "-c", "2",
            "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "warning"]
    proc = Proc(argv, os.path.join(workdir, f"celery-{vhost.name}.log"),
                env=peer_env(vhost, records_path), cwd=PEERS)
    return proc, [("celery", 1)]


def start_dramatiq(workdir, vhost, records_path, threads):
    argv = [os.path.join(BIN, "dramatiq"), "-p", "2", "-t", str(threads), "dramatiq_app"]
    proc = Proc(argv, os.path.join(workdir, f"dramatiq-{vhost.name}.log"),
                env=peer_env(vhost, records_path), cwd=PEERS)
    return proc, [("default", 2)]


def consuming(client, proc, queues):
    proc.check_alive()
    return all((client.counts(q) or (0, 0))[1] >= n for q, n in queues)


def run_one(workdir, label, kind, count, start):
    """Start the system, wait until it consumes, send, wait for every record: tasks/s,
    the client's publish rate, and CPU microseconds per task of the broker, of the
    system's own processes and of the client."""
    with Vhost(label) as vhost:
        path = record_dir(workdir, label)
        proc, queues = start(vhost, path)
        client = Client(vhost.name)
        try:
            wait_until(lambda: consuming(client, proc, queues), 60, f"{label} consuming")
            own, broker = session_pids(proc.pid), broker_pids()
            cpu_before = cpu_seconds(own), cpu_seconds(broker), _children_cpu()
            sent = subprocess.run([sys.executable, os.path.join(PEERS, "send.py"), kind,
                                   str(count), label], env={**os.environ, **peer_env(vhost, path)},
                                  capture_output=True, text=True, timeout=600, check=True)
            times = json.loads(sent.stdout.strip().splitlines()[-1])
            wait_until(lambda: count_records(path) >= count or proc.check_alive(),
                       max(120, count / 20), f"{count} {label} tasks done", interval=0.05)
            cpu_after = cpu_seconds(own), cpu_seconds(broker), _children_cpu()
        finally:
            try:
                proc.stop()
            finally:
                client.close()
    last = max(records(path).values())
    own_cpu, broker_cpu = (cpu_used(b, a) for b, a in zip(cpu_before[:2], cpu_after[:2]))
    cpu = [seconds * 1e6 / count for seconds in (own_cpu, broker_cpu, cpu_after[2] - cpu_before[2])]
    return count / (last - times["start"]), count / (times["end"] - times["start"]), cpu


def _children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(workdir, args):
    n = args.tasks
    systems = [
        ("taskqueue", "taskqueue", lambda v, p: start_taskqueue(workdir, v, p, "quorum")),
        ("taskqueue classic", "taskqueue", lambda v, p: start_taskqueue(workdir, v, p, "classic")),
        # One task at a time and nothing in advance: the round trip per task shows.
        ("taskqueue lookahead 0", "taskqueue",
         lambda v, p: start_taskqueue(workdir, v, p, "quorum", "lookahead: 0\n")),
        ("celery", "celery", lambda v, p: start_celery(workdir, v, p)),
        ("dramatiq t1", "dramatiq", lambda v, p: start_dramatiq(workdir, v, p, 1)),
        ("dramatiq t8", "dramatiq", lambda v, p: start_dramatiq(workdir, v, p, 8)),
    ]
    out = {}
    for name, kind, start in systems:
        rate, publish_rate, (own, broker, sender) = run_one(
            workdir, name.replace(" ", "-"), kind, n, start)
        out[f"e2e {name}"] = rate
        out[f"e2e {name} (publish rate)"] = publish_rate
        out[f"cpu/task {name}: own processes"] = own
        out[f"cpu/task {name}: broker"] = broker
        out[f"cpu/task {name}: client"] = sender
    return out
