"""Publish N no-op tasks with each system's own client, as fast as it can or one at a time.

    python send.py [--sequential] taskqueue|taskqueue-onehop|bare|celery|dramatiq N PREFIX
As fast as it can: prints {"start": ..., "end": ...} (time.time()) around the
publishing loop, so the bench's clock starts at the first publish, not at the
interpreter's start. --sequential: publishes one task, waits until the
records (BENCH_RECORD_DIR) show it started, then the next; prints {task id:
time.time() just before its publish}.
"""
import json
import os
import sys
import time

BENCH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Seconds a sequential task may take before the run is given up.
SEQUENTIAL_TIMEOUT = 30


def _client():
    sys.path.insert(0, BENCH)
    from common import Client
    vhost = os.environ["BENCH_BROKER_URL"].rsplit("/", 1)[1]
    return Client(vhost)


def taskqueue_sender():
    """The dispatcher path: the envelope to the queue `taskqueue` (the specification's protocol)."""
    client = _client()
    # No declare: the dispatcher declared it (quorum or classic) before we are started.

    def send(task_id):
        body = json.dumps({"worker_type": "bench", "workitem": {"id": task_id}}).encode()
        client.publish("taskqueue", body, content_type="application/json")
    return send, client.close


def taskqueue_onehop_sender():
    """The one-hop path: the workitem itself, routed by the broker (bench/onehop.py)."""
    client = _client()
    import onehop

    def send(task_id):
        onehop.publish(client.channel, "bench", json.dumps({"id": task_id}).encode())
    return send, client.close


def bare_sender():
    """The latency baseline: the workitem to the quorum queue `bare` (bare_consumer.py)."""
    client = _client()

    def send(task_id):
        client.publish("bare", json.dumps({"id": task_id}).encode(),
                       content_type="application/json")
    return send, client.close


def celery_sender():
    from celery_app import noop
    return noop.delay, lambda: None


def dramatiq_sender():
    from dramatiq_app import noop
    return noop.send, lambda: None


SENDERS = {"taskqueue": taskqueue_sender, "taskqueue-onehop": taskqueue_onehop_sender,
           "bare": bare_sender,
           "celery": celery_sender, "dramatiq": dramatiq_sender}


def burst(send, count, prefix):
    start = time.time()
    for n in range(count):
        send(f"{prefix}{n}")
    return {"start": start, "end": time.time()}


def sequential(send, count, prefix):
    from common import count_records, wait_until
    path = os.environ["BENCH_RECORD_DIR"]
    sent = {}
    for n in range(count):
        task_id = f"{prefix}{n}"
        sent[task_id] = time.time()
        send(task_id)
        wait_until(lambda: count_records(path) > n, SEQUENTIAL_TIMEOUT, f"task {task_id}",
                   interval=0.0005)
    return sent


def main(argv):
    mode = burst
    if argv[0] == "--sequential":
        mode, argv = sequential, argv[1:]
    kind, count, prefix = argv[0], int(argv[1]), argv[2]
    sys.path.insert(0, BENCH)
    send, close = SENDERS[kind]()
    result = mode(send, count, prefix)
    close()
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
