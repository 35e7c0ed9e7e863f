"""Where does a taskqueue process spend its time? py-spy over `taskqueue run`
(1 dispatcher, 2 bench workers) while N no-op tasks go through it; prints the
top functions (self and inclusive samples) of the dispatcher and of a worker.

    /var/tmp/taskqueue-bench-venv/bin/python bench/profile.py [TASKS] [SECONDS] [GIL] [QUEUE_TYPE] [KIND]
QUEUE_TYPE is quorum (the default) or classic; KIND is send.py's: taskqueue (the
dispatcher path, the default) or taskqueue-onehop. GIL=1 samples only threads holding the GIL (py-spy --gil): the hub's native
wait (Hub.run, idle threads) drops out, so the shares come closer to CPU time.
Run it after bench/run (which builds the venv); needs root (ptrace).
"""
import collections
import os
import re
import subprocess
import sys
import tempfile

from common import BIN, Client, Proc, Vhost, count_records, record_dir, wait_until
from m_e2e import PEERS, peer_env, start_taskqueue

TOP = 15


def roles(log):
    """{pid: 'dispatcher' | 'worker'} from the supervisor's RUNNING lines."""
    found = re.findall(r"(dispatcher|bench)#\d+ pid=(\d+) STARTING -> RUNNING", log)
    return {pid: "worker" if name == "bench" else name for name, pid in found}


def summarize(raw_path, pid_roles):
    """Per role: Counters of self and inclusive samples per function."""
    self_, incl = collections.defaultdict(collections.Counter), collections.defaultdict(collections.Counter)
    with open(raw_path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            frames = stack.split(";")
            # A child's stack is nested under its parent's "process N:..." frame: the last one is its own.
            pids = [re.match(r"process (\d+)", fr).group(1) for fr in frames if fr.startswith("process ")]
            role = pid_roles.get(pids[-1], "supervisor") if pids else "?"
            names = [re.sub(r":\d+\)$", ")", fr) for fr in frames if not fr.startswith(("process", "thread"))]
            if names:
                self_[role][names[-1]] += int(count)
                for name in set(names):
                    incl[role][name] += int(count)
    return self_, incl


def main(tasks=10_000, seconds=20, gil=0, queue_type="quorum", kind="taskqueue"):
    workdir = tempfile.mkdtemp(prefix="taskqueue-profile-")
    raw = os.path.join(workdir, "pyspy.raw")
    with Vhost("profile") as vhost:
        path = record_dir(workdir, "profile")
        proc, queues = start_taskqueue(workdir, vhost, path, queue_type)
        client = Client(vhost.name)
        try:
            wait_until(lambda: all((client.counts(q) or (0, 0))[1] >= n for q, n in queues)
                       or proc.check_alive(), 60, "taskqueue consuming")
            spy = Proc([os.path.join(BIN, "py-spy"), "record", "--pid", str(proc.pid),
                        "--subprocesses", "--rate", "200", "--format", "raw", "--output", raw,
                        "--duration", str(seconds), "--nonblocking"] + (["--gil"] if gil else []),
                       raw + ".log")
            # The client keeps its connection until every task started (send.py).
            sender = subprocess.Popen([sys.executable, os.path.join(PEERS, "send.py"),
                                       kind, str(tasks), "p"],
                                      env={**os.environ, **peer_env(vhost, path)},
                                      stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
            try:
                wait_until(lambda: count_records(path) >= tasks or sender.poll(), 300,
                           f"{tasks} tasks", 0.1)
            finally:
                sender.stdin.close()
                sender.wait(60)
            spy.process.wait(seconds + 30)  # py-spy writes its file when its duration ends
        finally:
            client.close()
            proc.stop()
    self_, incl = summarize(raw, roles(proc.log()))
    for role in sorted(self_):
        total = sum(self_[role].values())
        print(f"== {role}: {total} samples")
        for title, counter in (("self", self_[role]), ("inclusive", incl[role])):
            print(f"-- {title}")
            for name, count in counter.most_common(TOP):
                print(f"{100 * count / total:6.1f}%  {name}")
    print(f"raw stacks: {raw}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]), *sys.argv[4:6])
