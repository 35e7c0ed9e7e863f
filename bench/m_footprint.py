"""5. Footprint of an idle `taskqueue run` (2 bench workers, 1 dispatcher):
PSS of each process, and the supervisor's CPU over an idle period."""
import os
import re
import time

from m_restart import running
from common import Vhost, record_dir, taskqueue, wait_until

SETTLE = 3.0  # seconds after the last child is ready: imports and first heartbeats done


def pss_mb(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    raise ValueError(f"no Pss line for pid {pid}")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def dispatcher_pid(proc):
    found = re.findall(r"dispatcher#0 pid=(\d+) STARTING -> RUNNING", proc.log())
    return int(found[-1]) if found else None


def measure(workdir, args):
    config = (f"[DEFAULT]\nworkers: 0\n\n[bench]\nworkers: 2\n"
              f"record_dir: {record_dir(workdir, 'footprint')}\n")
    with Vhost("footprint") as vhost:
        proc = taskqueue("run", vhost.name, config, workdir)
        try:
            wait_until(lambda: (len(running(proc)) == 2 and dispatcher_pid(proc))
                       or proc.check_alive(), 60, "2 workers and a dispatcher running")
            time.sleep(SETTLE)
            workers = [pid for pid, _, _ in running(proc).values()]
            before, started = cpu_seconds(proc.pid), time.monotonic()
            time.sleep(args.idle)
            cpu = (cpu_seconds(proc.pid) - before) / (time.monotonic() - started) * 100
            out = {"idle worker PSS": max(pss_mb(pid) for pid in workers),
                   "idle dispatcher PSS": pss_mb(dispatcher_pid(proc)),
                   "idle supervisor PSS": pss_mb(proc.pid),
                   "idle supervisor CPU": cpu}
        finally:
            proc.stop()
    return out
