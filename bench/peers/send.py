"""Publish N no-op tasks with each system's own client, as fast as it can or one at a time.

    python send.py [--stepped] taskqueue|taskqueue-onehop|bare|celery|dramatiq N PREFIX
As fast as it can: prints {"start": ..., "end": ...} (time.time()) around the
publishing loop, so the bench's clock starts at the first publish, not at the
interpreter's start; then keeps its connection open until stdin closes (the
bench has seen every task start). Published without confirms, the last
messages may still sit in the broker's channel process, on their way to a
quorum queue's leader, when the publishing loop ends: closing the connection
then drops them (seen: the last 62 of 10 000 never arrived, under load). --stepped: for each line read on stdin, publishes one
task, waits until the records (BENCH_RECORD_DIR) show it started, and prints
its id and time.time() just before its publish; N tasks at most. The bench
steps the senders of several systems in turn, so that each system's latency
is measured over the same stretch of time (the same load on the machine).
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


def stepped(send, count, prefix):
    from common import count_records, wait_until
    path = os.environ["BENCH_RECORD_DIR"]
    for n in range(count):
        if not sys.stdin.readline():
            break
        task_id = f"{prefix}{n}"
        sent = time.time()
        send(task_id)
        wait_until(lambda: count_records(path) > n, SEQUENTIAL_TIMEOUT, f"task {task_id}",
                   interval=0.0005)
        print(task_id, f"{sent:.6f}", flush=True)


def main(argv):
    mode = burst
    if argv[0] == "--stepped":
        mode, argv = stepped, argv[1:]
    kind, count, prefix = argv[0], int(argv[1]), argv[2]
    sys.path.insert(0, BENCH)
    send, close = SENDERS[kind]()
    result = mode(send, count, prefix)
    if result is not None:
        print(json.dumps(result), flush=True)
        sys.stdin.read()   # until the bench is done with us
    close()


if __name__ == "__main__":
    main(sys.argv[1:])
