"""4. Restart latency: SIGKILL a worker child, time until its replacement is
consuming again (the supervisor's `STARTING -> RUNNING` line, logged once the
child's basic_consume was answered), from the line's timestamp (1 ms).

With `--restart-user USER` the bench group runs as USER (the supervisor as
root): its children switch users, so each start execs a fresh interpreter
(taskqueue/supervision/childexec.py); its figures are the rows `restart as USER ...`."""
import datetime
import os
import re
import signal
import time

from common import Vhost, record_dir, taskqueue, wait_until
from stats import percentile

SLOTS = 5           # children of the bench type: kills rotate among them
MIN_AGE = 2.5       # a child younger than 2 s that dies counts as crashing (backoff by design)
RUNNING = re.compile(r"^(\S+ \S+) taskqueue\[\d+\] supervisor INFO: (bench#\d+) pid=(\d+) "
                     r"STARTING -> RUNNING \(ready in ([\d.]+)s\)", re.MULTILINE)
DIED = r"^(\S+ \S+) taskqueue\[\d+\] supervisor WARNING: bench#\d+ pid={pid} killed by SIGKILL"


def epoch(stamp):
    """A log line's asctime (local time, ms) as time.time() seconds."""
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def running(proc):
    """{slot: (pid, epoch seconds of its RUNNING line, ready-in seconds)}, latest per slot."""
    latest = {}
    for stamp, slot, pid, ready in RUNNING.findall(proc.log()):
        latest[slot] = (int(pid), epoch(stamp), float(ready))
    return latest


def kill_and_time(proc, slot):
    """Wait until `slot`'s child is MIN_AGE old, SIGKILL it.

    Returns milliseconds from the kill to: the replacement RUNNING, the
    supervisor's line about the death; and the replacement's own ready-in.
    """
    def old_enough():
        current = running(proc).get(slot)
        return current if current and current[1] <= time.time() - MIN_AGE else None
    pid, _, _ = wait_until(old_enough, 30, f"{slot} running for {MIN_AGE}s", interval=0.05)
    os.kill(pid, signal.SIGKILL)
    killed = time.time()
    new_pid, back, ready = wait_until(
        lambda: proc.check_alive() or (running(proc)[slot][0] != pid and running(proc)[slot]),
        30, f"{slot} replaced after pid {pid}", interval=0.01)
    died = epoch(re.search(DIED.format(pid=pid), proc.log(), re.MULTILINE).group(1))
    return (back - killed) * 1000, (died - killed) * 1000, ready * 1000


def measure(workdir, args):
    user = getattr(args, "restart_user", None)
    config = (f"[DEFAULT]\nworkers: 0\n\n[bench]\nworkers: {SLOTS}\n"
              f"record_dir: {record_dir(workdir, 'restart')}\n")
    if user:
        config += f"user: {user}\n"
        os.chmod(workdir, 0o755)   # its records directory, reached by USER
    with Vhost("restart") as vhost:
        proc = taskqueue("workerpool", vhost.name, config, workdir)
        try:
            wait_until(lambda: len(running(proc)) == SLOTS or proc.check_alive(), 60,
                       f"{SLOTS} bench workers running")
            times = [kill_and_time(proc, f"bench#{k % SLOTS}") for k in range(args.kills)]
            backoffs = len(re.findall(r"bench#\d+ pid=\S+ \S+ -> BACKOFF", proc.log()))
        finally:
            proc.stop()
    back, died, ready = (sorted(column) for column in zip(*times))
    row = f"restart as {user}" if user else "restart"
    return {f"{row} p50": percentile(back, 50), f"{row} p99": percentile(back, 99),
            f"{row} kill->death logged p50": percentile(died, 50),
            f"{row} fork->RUNNING (ready in) p50": percentile(ready, 50),
            f"{row} fork->RUNNING (ready in) p99": percentile(ready, 99),
            f"{row} backoffs": backoffs}
