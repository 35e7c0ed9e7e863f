"""Task events written to the stream by real clients, dispatchers and workers
(protocol/events.py): what each stage writes, through retries, with events off."""
import socket
import time
import uuid

import pytest

from support import recorder_config, serving, stream_events, wait_for
from taskqueue.client import Client, TaskFailed
from taskqueue.protocol import taskids


def kinds(found):
    return [e["event"] for e in found]


def history(vhost, task, last, timeout=15):
    """The task's events once `last` is among them (events go out every 0.25 s)."""
    return wait_for(lambda: (lambda found: found if last in kinds(found) else None)(
        stream_events(vhost, task)), timeout, f"the {last} event of {task}")


@pytest.mark.timeout(60)
def test_a_done_task_is_submitted_started_and_done_with_who_and_how_long(
        broker, vhost, start_pool, records, client):
    serving(broker, start_pool, recorder_config(records), "worker_recorder")
    task = client.submit("recorder", {"id": "one"})
    assert abs(taskids.issued_at(task) - time.time()) < 60
    found = history(vhost, task, "done")
    assert kinds(found) == ["submitted", "started", "done"]
    submitted, started, done = found
    assert {e["type"] for e in found} == {"recorder"}
    assert {e["host"] for e in found} == {socket.gethostname()}
    assert "test_a_done_task" in submitted["child"]    # the Client's name
    assert started["child"] == done["child"] and started["pid"] == done["pid"]
    assert started["child"].startswith("recorder")
    assert started["attempt"] == 1 and "redelivered" not in started
    assert 0 <= done["duration"] < 5
    assert submitted["at"] <= started["at"] <= done["at"]


@pytest.mark.timeout(60)
def test_the_dispatcher_writes_routed_and_a_dead_letter_says_why(
        broker, vhost, start_pool, records):
    serving(broker, start_pool, recorder_config(records), "worker_recorder")
    # The stream outlives a test (one vhost per run): ids of this test only.
    via, bad = f"m-via-{uuid.uuid4().hex}", f"m-bad-{uuid.uuid4().hex}"
    broker.submit("recorder", {"id": "via"}, message_id=via)
    assert kinds(history(vhost, via, "done")) == ["routed", "started", "done"]
    broker.publish_raw(b"not json", content_type="application/json", message_id=bad)
    [dead] = history(vhost, bad, "dead")
    assert "JSON" in dead["reason"] and dead["child"].startswith("dispatcher")


@pytest.mark.timeout(90)
def test_a_retried_task_shows_each_attempt_then_why_it_failed(
        broker, vhost, start_pool, records, client):
    serving(broker, start_pool, recorder_config(
        records, extra="max_retries: 2\nretry_delay: 1\nretry_backoff: 1\n"), "worker_recorder")
    with pytest.raises(TaskFailed) as failed:
        client.call("recorder", {"id": "r", "fail_times": 5}, timeout=30)
    found = history(vhost, failed.value.task_id, "dead")
    # A retry goes through the delay chain to taskqueue: the dispatcher routes it again.
    assert kinds(found) == ["submitted", "started", "retried", "routed", "started", "retried",
                            "routed", "started", "dead"]
    assert [e["attempt"] for e in found if e["event"] == "started"] == [1, 2, 3]
    retried = [e for e in found if e["event"] == "retried"]
    assert all(1 <= e["delay"] < 1.5 for e in retried) and len(retried) == 2   # 1 s, jittered
    assert "RuntimeError: task r fails attempt 0" in retried[0]["reason"]
    assert found[-1]["reason"] == failed.value.reason


@pytest.mark.timeout(60)
def test_a_raising_task_without_retries_fails_and_a_rejected_one_too(
        broker, vhost, start_pool, records, client):
    serving(broker, start_pool, recorder_config(records), "worker_recorder")
    task = client.submit("recorder", {"id": "boom", "raise": True})
    failed = history(vhost, task, "failed")[-1]
    assert failed["reason"] == "raised RuntimeError: task boom asked to fail"
    task = client.submit("recorder", {"id": "no", "reject": True})
    assert history(vhost, task, "failed")[-1]["reason"].startswith("rejected by the plugin")


@pytest.mark.timeout(60)
def test_bulk_submits_write_one_submitted_event_per_confirmed_task(broker, vhost, client):
    ids = client.submit_many("recorder", [{"id": str(n)} for n in range(600)])
    found = wait_for(lambda: (lambda f: f if len(f) >= 600 else None)(
        [e for e in stream_events(vhost) if e["task"] in set(ids)]), 15,
        "600 submitted events")
    assert sorted(e["task"] for e in found) == sorted(ids)
    assert set(kinds(found)) == {"submitted"}


@pytest.mark.timeout(60)
def test_with_events_off_nothing_is_written(broker, vhost, start_pool, records, amqp_port):
    serving(broker, start_pool, recorder_config(records), "worker_recorder")
    with Client(host="127.0.0.1", port=amqp_port, vhost=vhost, events=False) as quiet:
        quiet_task = quiet.submit("recorder", {"id": "q"})
    with Client(host="127.0.0.1", port=amqp_port, vhost=vhost) as loud:
        loud_task = loud.submit("recorder", {"id": "l"})
    history(vhost, loud_task, "done")
    wait_for(lambda: "q" in records.ids(), 10, "the quiet task done")
    assert kinds(stream_events(vhost, quiet_task)) == ["started", "done"]   # the pool's only


@pytest.mark.timeout(60)
def test_a_pool_with_events_off_writes_none(broker, vhost, start_pool, records, client):
    pool = start_pool(recorder_config(records), amqp_extra="events: no\n")
    wait_for(lambda: broker.counts("worker_recorder")[1] >= 1, 20, "a consumer")
    task = client.submit("recorder", {"id": "x"})
    wait_for(lambda: "x" in records.ids(), 10, "the task done")
    assert kinds(stream_events(vhost, task)) == ["submitted"]
    pool.stop()


@pytest.mark.timeout(60)
def test_a_stream_declared_with_another_retention_is_used_as_it_is(
        broker, vhost, start_pool, records, client):
    channel = broker.connection.channel()
    channel.queue_delete("taskqueue_events")
    channel.queue_declare("taskqueue_events", durable=True, arguments={
        "x-queue-type": "stream", "x-max-age": "3600s"})
    pool = serving(broker, start_pool, recorder_config(records), "worker_recorder")
    task = client.submit("recorder", {"id": "kept"})
    assert kinds(history(vhost, task, "done")) == ["submitted", "started", "done"]
    assert "exists with other arguments" in pool.log()
    channel.queue_delete("taskqueue_events")


@pytest.mark.timeout(60)
def test_the_submitted_and_started_events_name_the_tasks_trace(
        broker, vhost, start_pool, records, client):
    serving(broker, start_pool, recorder_config(records), "worker_recorder")
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    task = client.submit("recorder", {"id": "traced"},
                         traceparent=f"00-{trace}-00f067aa0ba902b7-01")
    found = history(vhost, task, "done")
    assert [e.get("trace") for e in found] == [trace, trace, None]
