"""Scale: N worker types x 1 process each on one host (a `taskqueue workerpool`).

The N types are N real plugins as taskqueue finds them: entry points of the
group `worker.plugins`, in a distribution's metadata on the path. The bench
writes that metadata (`<dir>/taskqueue_bench_types-0.1.0.dist-info`, N entry
points `btNNN = tqbench.noop:Noop.factory`: the bench plugin's no-op under N
names) and puts the directory on the pool's PYTHONPATH only, so nothing else
in the bench venv sees the types. The config has `[DEFAULT] workers: 0` and a
section per type with `workers: 1`.

For each N, in a fresh vhost:
- `first`: from just before the pool's process is started until the last
  child's `STARTING -> RUNNING` line (the supervisor logs it when the child
  reports `ready`, i.e. once its basic_consume was answered; 1 ms
  timestamps), with the queues created by that start; `first, broker`: the
  same seen from the broker, a passive declare of every queue not yet
  consumed every 50 ms (the moment the last one had a consumer);
- `existing`: the pool stopped and started again, its queues there now;
- the supervisor's CPU over `--types-idle` seconds idle, then while
  `--types-tasks` no-op tasks (spread evenly over the N queues) drain;
- `taskqueue status` wall time (the median of 3 calls; as root, it lists
  the vhost's queues with rabbitmqctl too);
- PSS (smaps_rollup) of every idle worker child: the median.
"""
import datetime
import json
import os
import re
import statistics
import subprocess
import time

from taskqueue.protocol.topology import worker_queue

from common import (BIN, BenchError, Client, Vhost, broker_pids, count_records, cpu_seconds,
                    record_dir, taskqueue, wait_until)
from m_footprint import pss_mb

SETTLE = 3.0           # seconds after the last child is ready before the idle period
POLL = 0.05            # seconds between two looks at the log and at the broker
START_TIMEOUT = 300    # seconds for N children to be consuming
RUNNING = re.compile(r"^(\S+ \S+) taskqueue\[\d+\] supervisor INFO: (bt\d+)#0 pid=(\d+) "
                     r"STARTING -> RUNNING \(ready in ([\d.]+)s\)", re.MULTILINE)
STARTED = re.compile(r"^(\S+ \S+) taskqueue\[\d+\] supervisor INFO: supervisor started",
                     re.MULTILINE)


#: AMQP connections a worker child holds: its session, its event log's, its cancels reader's.
CONNECTIONS_PER_WORKER = 3
#: File descriptors left to everyone else on the broker (the test suite, other benches).
FD_RESERVE = 400


def check_broker_fds(n):
    """Refuse to start N workers when the broker's open-file limit cannot take their
    connections. Seen on 2026-12-06: 200 types (600 connections) on a broker whose soft
    limit was 1024, beside a test run, ran it out of descriptors; its Mnesia then failed
    and the node stopped serving until restarted."""
    pids = broker_pids()
    if len(pids) != 1:
        raise BenchError(f"cannot tell the broker's process (pids {pids}): its open-file "
                         f"limit is unknown, not starting {n} workers")
    with open(f"/proc/{pids[0]}/limits") as f:
        limit = next(int(line.split()[3]) for line in f if line.startswith("Max open files"))
    used = len(os.listdir(f"/proc/{pids[0]}/fd"))
    needed = CONNECTIONS_PER_WORKER * n + FD_RESERVE
    if used + needed > limit:
        raise BenchError(f"{n} types need about {CONNECTIONS_PER_WORKER * n} broker connections "
                         f"(+{FD_RESERVE} kept for others); the broker (pid {pids[0]}) has {used} "
                         f"files open of its limit {limit}: raise it (LimitNOFILE of "
                         f"rabbitmq-server) or pass a smaller --types")


def type_names(n):
    return [f"bt{k:03d}" for k in range(n)]


def write_plugins(workdir, n):
    """A directory holding the metadata of a distribution whose N entry points are N
    worker types (importlib.metadata reads any *.dist-info on sys.path)."""
    path = os.path.join(workdir, f"types-{n}-plugins")
    info = os.path.join(path, "taskqueue_bench_types-0.1.0.dist-info")
    os.makedirs(info, exist_ok=True)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\nName: taskqueue-bench-types\nVersion: 0.1.0\n")
    with open(os.path.join(info, "entry_points.txt"), "w") as f:
        f.write("[worker.plugins]\n" + "".join(f"{name} = tqbench.noop:Noop.factory\n"
                                               for name in type_names(n)))
    return path


def epoch(stamp):
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def running(proc):
    """{type: (pid, epoch of its RUNNING line, ready-in seconds)}, the latest per type."""
    return {name: (int(pid), epoch(stamp), float(ready))
            for stamp, name, pid, ready in RUNNING.findall(proc.log())}


def start_pool(workdir, vhost, config, env, n, client):
    """Start the pool, wait until its N children are consuming; (pool, figures).
    With `client`, the broker is polled too (every queue: a consumer)."""
    queues = [worker_queue(name) for name in type_names(n)]
    pending, broker_done = set(queues), None
    t0 = time.time()
    proc = taskqueue("workerpool", vhost.name, config, workdir, env=env)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        seen = running(proc)
        if client is not None and pending:
            for queue in sorted(pending):
                counts = client.counts(queue)
                if counts is not None and counts[1] >= 1:
                    pending.discard(queue)
            if not pending:
                broker_done = time.time()
        if len(seen) == n and (client is None or not pending):
            break
        proc.check_alive()
        if time.monotonic() > deadline:
            proc.stop()
            raise BenchError(f"{n} types: {len(seen)} children running after {START_TIMEOUT}s")
        time.sleep(POLL)
    stamps = sorted(stamp for _, stamp, _ in seen.values())
    readies = sorted(ready for _, _, ready in seen.values())
    began = STARTED.search(proc.log())
    out = {"all consuming": stamps[-1] - t0,
           "first consuming": stamps[0] - t0,
           "supervisor started": (epoch(began.group(1)) - t0) if began else float("nan"),
           "ready in p50": statistics.median(readies),
           "ready in max": readies[-1]}
    if broker_done is not None:
        out["all consuming, broker"] = broker_done - t0
    return proc, out


def status_seconds(config_path, env, n):
    """Wall time of one `taskqueue status`. Its exit is 1 (unhealthy) here: a pool
    without a dispatcher leaves the queue `taskqueue` unconsumed; it must show all N."""
    argv = [os.path.join(BIN, "taskqueue"), "status", "--config", config_path]
    started = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **env},
                         timeout=60)
    seconds = time.monotonic() - started
    shown = len(re.findall(r"^  bt\d+#0 ", out.stdout, re.MULTILINE))
    if out.returncode not in (0, 1) or shown != n:
        raise BenchError(f"taskqueue status exited {out.returncode}:\n{out.stdout[-1500:]}"
                         f"{out.stderr[-1500:]}")
    return seconds


def load(proc, client, names, records_path, total):
    """Publish `total` no-op tasks spread over the types' queues; (supervisor CPU %, tasks/s)
    from the first publish to the last record."""
    before, started = cpu_seconds([proc.pid]), time.monotonic()
    for k in range(total):
        client.publish(worker_queue(names[k % len(names)]), json.dumps({"id": f"l{k}"}).encode())
    wait_until(lambda: count_records(records_path) >= total or proc.check_alive(), 300,
               f"{total} tasks over {len(names)} types", interval=POLL)
    seconds = time.monotonic() - started
    cpu = cpu_seconds([proc.pid])[proc.pid] - before[proc.pid]
    return cpu / seconds * 100, total / seconds


def measure_one(workdir, args, n):
    check_broker_fds(n)
    names = type_names(n)
    env = {"PYTHONPATH": write_plugins(workdir, n)}
    records_path = record_dir(workdir, f"types{n}")
    status_dir = os.path.join(workdir, f"types-{n}-status-{os.getpid()}-{time.monotonic_ns()}")
    os.mkdir(status_dir)
    config = (f"[DEFAULT]\nworkers: 0\n\n[supervisor]\nstatus_dir: {status_dir}\n\n"
              + "".join(f"[{name}]\nworkers: 1\nrecord_dir: {records_path}\n\n" for name in names))
    row = f"types {n}"
    out = {}
    with Vhost(f"types{n}") as vhost:
        client = Client(vhost.name)
        try:
            proc, first = start_pool(workdir, vhost, config, env, n, client)
            try:
                out[f"{row} all consuming first (s)"] = first["all consuming"]
                out[f"{row} all consuming first, broker (s)"] = first["all consuming, broker"]
                out[f"{row} ready in p50 first (s)"] = first["ready in p50"]
                time.sleep(SETTLE)
                workers = [pid for pid, _, _ in running(proc).values()]
                before, started = cpu_seconds([proc.pid]), time.monotonic()
                time.sleep(args.types_idle)
                idle = (cpu_seconds([proc.pid])[proc.pid] - before[proc.pid]) \
                    / (time.monotonic() - started) * 100
                out[f"{row} supervisor idle cpu (%)"] = idle
                out[f"{row} worker pss (MB)"] = statistics.median(pss_mb(pid) for pid in workers)
                out[f"{row} supervisor pss (MB)"] = pss_mb(proc.pid)
                config_path = proc.log_path.replace(".log", ".ini")
                out[f"{row} status (s)"] = statistics.median(
                    status_seconds(config_path, env, n) for _ in range(3))
                cpu, rate = load(proc, client, names, records_path, args.types_tasks)
                out[f"{row} supervisor load cpu (%)"] = cpu
                out[f"{row} load rate (tasks/s)"] = rate
            finally:
                proc.stop()
            # Every consumer of the first pool gone, so that the broker's side of
            # the next start sees only the new pool's.
            wait_until(lambda: all(not (client.counts(worker_queue(name)) or (0, 0))[1]
                                   for name in names), 30, f"{n} queues without consumers",
                       interval=POLL)
            proc, existing = start_pool(workdir, vhost, config, env, n, client)
            try:
                out[f"{row} all consuming existing (s)"] = existing["all consuming"]
                out[f"{row} all consuming existing, broker (s)"] = existing["all consuming, broker"]
                out[f"{row} supervisor started existing (s)"] = existing["supervisor started"]
                out[f"{row} first consuming existing (s)"] = existing["first consuming"]
                out[f"{row} ready in p50 existing (s)"] = existing["ready in p50"]
                out[f"{row} ready in max existing (s)"] = existing["ready in max"]
            finally:
                proc.stop()
        finally:
            client.close()
    return out


def measure(workdir, args):
    out = {}
    for n in (int(x) for x in args.types.split(",")):
        out.update(measure_one(workdir, args, n))
    return out
