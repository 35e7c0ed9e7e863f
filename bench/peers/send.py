"""Publish N no-op tasks as fast as one client can, with each system's own client.

    python send.py taskqueue|celery|dramatiq N PREFIX
Prints {"start": ..., "end": ...} (time.time()) around the publishing loop, so
the bench's clock starts at the first publish, not at the interpreter's start.
"""
import json
import os
import sys
import time


def taskqueue_sender():
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from common import Client
    vhost = os.environ["BENCH_BROKER_URL"].rsplit("/", 1)[1]
    client = Client(vhost)
    # No declare: the dispatcher declared it (quorum or classic) before we are started.

    def send(task_id):
        body = json.dumps({"worker_type": "bench", "workitem": {"id": task_id}}).encode()
        client.publish("taskqueue", body, content_type="application/json")
    return send, client.close


def celery_sender():
    from celery_app import noop
    return noop.delay, lambda: None


def dramatiq_sender():
    from dramatiq_app import noop
    return noop.send, lambda: None


def main(kind, count, prefix):
    send, close = {"taskqueue": taskqueue_sender, "celery": celery_sender,
                   "dramatiq": dramatiq_sender}[kind]()
    start = time.time()
    for n in range(count):
        send(f"{prefix}{n}")
    end = time.time()
    close()
    print(json.dumps({"start": start, "end": end}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
