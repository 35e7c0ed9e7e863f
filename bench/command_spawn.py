"""How many tasks a second one `command:` worker can run at most: the cost of one
program per task (runtime/commandworker.run: fork, exec /bin/sh, stdin, stdout,
its process group killed and reaped), without the broker.

    PYTHONPATH=. python3 bench/command_spawn.py [--tasks 1000]

Prints runs per second for a trivial /bin/sh script, in the worker's own way (one
thread, one run after the other). A worker's end-to-end rate is lower: each task
also crosses the broker (bench/run measures that path for Python plugins).
"""
import argparse
import os
import statistics
import tempfile
import time

from taskqueue.runtime.commandworker import run


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        script = os.path.join(scratch, "task.sh")
        with open(script, "w") as f:
            f.write("#!/bin/sh\ncat\n")
        os.chmod(script, 0o755)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        rates = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            for n in range(args.tasks):
                result = run([script], b'{"n": %d}' % n, env)
                assert result.returncode == 0 and result.stdout == b'{"n": %d}' % n
            rates.append(args.tasks / (time.perf_counter() - started))
    print(f"command_spawn: /bin/sh script, {args.tasks} runs x {args.repeat}: "
          f"median {statistics.median(rates):.0f} runs/s (min {min(rates):.0f}, "
          f"max {max(rates):.0f}), {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
