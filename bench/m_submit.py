"""How fast one client submits: Client.submit_many, Client.submit in a loop from one
thread, and `taskqueue submit --file`, each into a `taskqueue` queue of its own vhost
(quorum, nothing consuming it: the client's rate alone, every task confirmed)."""
import os
import re
import subprocess
import time

from taskqueue.client import Client

from common import BIN, HOST, PORT, BenchError, Vhost


def _rate(count, seconds):
    return count / seconds if seconds > 0 else 0.0


def client_rates(vhost, count, loop_count):
    with Client(url=vhost.url, name="bench submit") as client:
        client.submit("bench", {"warm": "up"})      # connected, taskqueue declared
        started = time.monotonic()
        ids = client.submit_many("bench", [{"n": n} for n in range(count)])
        many = _rate(len(ids), time.monotonic() - started)
        started = time.monotonic()
        for n in range(loop_count):
            client.submit("bench", {"n": n})
        loop = _rate(loop_count, time.monotonic() - started)
    return many, loop


def file_rates(vhost, workdir, count):
    """(the command's own rate, publishing only; the whole command, start-up included)."""
    config = os.path.join(workdir, f"submit-{vhost.name}.ini")
    with open(config, "w") as f:
        f.write(f"[DEFAULT]\nworkers: 0\n\n[amqp]\nhost: {HOST}\nport: {PORT}\n"
                f"vhost: {vhost.name}\n")
    path = os.path.join(workdir, f"submit-{vhost.name}.jsonl")
    with open(path, "w") as f:
        f.writelines(f'{{"n": {n}}}\n' for n in range(count))
    started = time.monotonic()
    out = subprocess.run([os.path.join(BIN, "taskqueue"), "submit", "--config", config,
                          "--file", path, "bench"], capture_output=True, text=True, timeout=300)
    whole = _rate(count, time.monotonic() - started)
    found = re.search(rf"submitted {count} of {count} tasks .* \(([\d,]+)/s\)", out.stderr)
    if out.returncode != 0 or not found:
        raise BenchError(f"taskqueue submit --file failed ({out.returncode}): {out.stderr[-500:]}")
    return float(found.group(1).replace(",", "")), whole


def measure(workdir, args):
    count = args.submit_tasks
    loop_count = max(1, count // 5)     # one confirm round trip each: fewer, same precision
    with Vhost("submit") as vhost:
        many, loop = client_rates(vhost, count, loop_count)
    with Vhost("submitfile") as vhost:
        own, whole = file_rates(vhost, workdir, count)
    return {"submit client submit_many": many, "submit client loop": loop,
            "submit cli --file": own, "submit cli --file (whole command)": whole}
