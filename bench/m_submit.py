"""How fast one client submits: Client.submit_many, Client.submit in a loop from one
thread, Client.submit from 1, 4, 16 threads sharing one Client (--submit-threads),
and `taskqueue submit --file`, each into a `taskqueue` queue of its own vhost
(quorum, nothing consuming it: the client's rate alone, every task confirmed)."""
import os
import re
import subprocess
import threading
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


def threads_rate(vhost, threads, count):
    """Client.submit of `count` tasks in all from `threads` threads sharing one Client
    (its design: one connection, served by the Client's I/O thread), each thread
    having submitted once (the connection open) before the clock starts; tasks/s from the start to the last thread's end."""
    per_thread = max(1, count // threads)
    ready = threading.Barrier(threads + 1)
    errors = []

    def submitter(client):
        try:
            client.submit("bench", {"warm": "up"})      # this thread's connection
        except Exception as exc:
            errors.append(exc)
        ready.wait(60)      # all connected: go
        if errors:
            return
        try:
            for n in range(per_thread):
                client.submit("bench", {"n": n})
        except Exception as exc:   # reported below, after every thread ended
            errors.append(exc)
    with Client(url=vhost.url, name="bench submit threads") as client:
        workers = [threading.Thread(target=submitter, args=(client,), daemon=True)
                   for _ in range(threads)]
        for worker in workers:
            worker.start()
        ready.wait(60)
        started = time.monotonic()
        for worker in workers:
            worker.join(300)
        seconds = time.monotonic() - started
        if errors or any(worker.is_alive() for worker in workers):
            raise BenchError(f"submit from {threads} threads: {errors[:1] or 'timed out'}")
    return _rate(per_thread * threads, seconds)


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
    out = {"submit client submit_many": many, "submit client loop": loop,
           "submit cli --file": own, "submit cli --file (whole command)": whole}
    counts = sorted(int(n) for n in args.submit_threads.split(","))
    for threads in counts:
        with Vhost(f"submit{threads}t") as vhost:
            out[f"submit threads {threads}"] = threads_rate(vhost, threads, count)
    if counts[-1] > counts[0]:   # within one repetition
        out[f"ratio submit threads {counts[-1]} / {counts[0]}"] = (
            out[f"submit threads {counts[-1]}"] / out[f"submit threads {counts[0]}"])
    return out
