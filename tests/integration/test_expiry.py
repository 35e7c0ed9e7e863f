"""Expiry on the real broker (protocol/expiry.py): a task not started by its deadline is
never started, and is recorded as expired (an event, a failure reply, the metrics); one
whose deadline is far runs. On both paths: one hop into worker_<type>, and through the
dispatcher (a task submitted to `taskqueue`, a delayed one)."""
import threading
import time
import urllib.request

import pytest

from nodes import free_port
from support import recorder_config, stream_events, wait_for
from taskqueue.client import TaskFailed
from taskqueue.protocol import expiry


def started_ids(records):
    return set(records.ids("start"))


@pytest.mark.timeout(90)
def test_a_task_past_its_deadline_is_never_started_and_is_recorded_expired(
        broker, start_pool, records, client):
    # Given worker_recorder and taskqueue exist (a pool ran), and no worker runs now
    pool = start_pool(recorder_config(records))
    wait_for(lambda: broker.counts("worker_recorder")[1] == 1, 20, "a consumer")
    assert pool.stop() == 0
    submitted = time.time()
    # When tasks are submitted that expire in 1 s, one hop and through the dispatcher
    # (enveloped to `taskqueue`, and delayed 1 s), and others that expire in 60 s
    short = {"onehop-1": client.submit("recorder", {"id": "onehop-1"}, expires=1),
             "delayed-1": client.submit("recorder", {"id": "delayed-1"}, delay=1, expires=2)}
    broker.submit("recorder", {"id": "envelope-1"}, message_id="envelope-1",
                  headers={expiry.EXPIRES_HEADER: expiry.deadline(1)})
    short["envelope-1"] = "envelope-1"
    long = {"onehop-60": client.submit("recorder", {"id": "onehop-60"}, expires=60),
            "delayed-60": client.submit("recorder", {"id": "delayed-60"}, delay=1, expires=60)}
    # and a caller waits for the reply of one that expires in 1 s
    failed = []
    caller = threading.Thread(target=_call, args=(broker.vhost, failed), daemon=True)
    caller.start()
    wait_for(lambda: broker.counts("worker_recorder")[0] >= 3, 10, "the one-hop tasks queued")
    # and the worker starts 3 s after the first submit: every 1 s deadline has passed
    wait_for(lambda: time.time() >= submitted + 3, 10, "3 s since the first submit",
             interval=0.1)
    pool = start_pool(recorder_config(records))
    # Then the 60 s ones run, the 1 s ones never start
    wait_for(lambda: set(long) <= set(records.ids()), 20, "the tasks with 60 s to run")
    caller.join(20)
    assert not (set(short) | {"call-1"}) & started_ids(records)
    # and each is recorded as expired, with how late it was
    for name, task_id in short.items():
        events = wait_for(lambda: [e for e in stream_events(broker.vhost, task_id)
                                   if e["event"] == "expired"], 10, f"{name}'s expired event")
        assert events[0]["reason"].startswith("expired ") and \
            events[0]["reason"].endswith("s before it could start"), events
        assert events[0]["type"] == "recorder"
    # and the caller got a failure reply at once, saying so
    [error] = failed
    assert isinstance(error, TaskFailed) and error.reason.startswith("expired "), error
    # and nothing is left behind or dead-lettered
    assert broker.counts("worker_recorder")[0] == 0
    assert broker.counts("taskqueue_dead")[0] == 0
    pool.wait_log(r"task \S+ \(delivery \d+\) not run: expired \d+\.\d+s before it could start",
                  count=4)


def _call(vhost, failed):
    from support import BROKER_HOST
    from taskqueue.client import Client
    with Client(host=BROKER_HOST, vhost=vhost, name="expiry caller") as client:
        try:
            client.call("recorder", {"id": "call-1", "reply": 1}, timeout=30, expires=1)
        except Exception as exc:    # the test looks at what it was
            failed.append(exc)


@pytest.mark.timeout(60)
def test_the_metrics_count_expired_tasks_by_group(broker, start_pool, records, client):
    port = free_port()
    pool = start_pool(recorder_config(records) + f"\n[metrics]\nport: {port}\n")
    wait_for(lambda: broker.counts("worker_recorder")[1] == 1, 20, "a consumer")
    # a task whose deadline passed before it was even published (a publisher's clock, or
    # a slow client): as any late task
    broker.submit_one_hop("recorder", {"id": "past"}, message_id="past",
                          headers={expiry.EXPIRES_HEADER: expiry.deadline(-5)})
    client.submit("recorder", {"id": "after"})
    wait_for(lambda: "after" in records.ids(), 20, "the next task")
    assert "past" not in started_ids(records)
    pool.wait_log(rf"metrics on http://127.0.0.1:{port}/metrics")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    assert 'taskqueue_tasks_total{group="recorder",type="recorder",outcome="expired"} 1' in text
