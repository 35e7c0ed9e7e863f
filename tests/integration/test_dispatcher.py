"""The dispatcher: routing, properties kept, and malformed input dead-lettered."""
import json
import re

import pytest

from support import wait_for, recorder_config

MALFORMED = [
    ("not json", b"hello", {}, "body is not JSON"),
    ("invalid utf-8", b"\xff\xfe\x00garbage", {}, "body is not JSON"),
    ("empty body", b"", {}, "body is not JSON"),
    ("array", b"[1, 2]", {}, "envelope is a JSON array"),
    ("string", b'"recorder"', {}, "envelope is a JSON string"),
    ("no type", b'{"workitem": 1}', {}, "envelope has no worker_type"),
    ("number type", b'{"worker_type": 5, "workitem": 1}', {}, "worker_type is a JSON number"),
    ("null type", b'{"worker_type": null, "workitem": 1}', {}, "worker_type is a JSON null"),
    ("empty type", b'{"worker_type": "", "workitem": 1}', {}, "is not 1-200 characters"),
    ("bad chars", b'{"worker_type": "a/b", "workitem": 1}', {}, "is not 1-200 characters"),
    ("overlong", json.dumps({"worker_type": "x" * 201, "workitem": 1}).encode(), {},
     "is not 1-200 characters"),
    ("no workitem", b'{"worker_type": "recorder"}', {}, "envelope has no workitem"),
    ("NaN", b'{"worker_type": "recorder", "workitem": NaN}', {}, "body is not JSON"),
    ("deep", b"[" * 100000, {}, "nested too deeply"),
    ("content type", b'{"worker_type": "recorder", "workitem": {"id": "x"}}',
     {"content_type": "text/plain"}, "is not application/json"),
    ("bad header type", b"opaque", {"headers": {"worker_type": "no spaces allowed"}},
     "header worker_type"),
]


def test_malformed_messages_are_dead_lettered_with_a_reason_and_valid_ones_still_pass(
        broker, start_pool, records):
    pool = start_pool(recorder_config(records))
    for name, body, props, _ in MALFORMED:
        broker.publish_raw(body, message_id=name, **props)
        broker.submit("recorder", {"id": f"after-{name.replace(' ', '_')}"})
    wait_for(lambda: len(records.ids()) == len(MALFORMED), 30, "every valid task done")
    dead = wait_for(lambda: broker.counts("taskqueue_dead")[0] == len(MALFORMED)
                    and broker.drain("taskqueue_dead"), 10, "every malformed message dead-lettered")
    reasons = {props.message_id: props.headers["x-taskqueue-reason"] for props, _ in dead}
    bodies = {props.message_id: body for props, body in dead}
    for name, body, _, expected in MALFORMED:
        assert expected in reasons[name], (name, reasons[name])
        assert bodies[name] == body  # kept as it came, for inspection and requeue
    assert all(props.headers["x-taskqueue-queue"] == "taskqueue" for props, _ in dead)
    # The dispatcher was never restarted.
    assert len(pool.wait_log(r"dispatcher#0 pid=\d+ STARTING -> RUNNING")) == 1
    assert not re.search(r"dispatcher#0 pid=\d+ (exit|killed)", pool.log())
    assert pool.stop() == 0


def test_routed_workitem_keeps_the_original_properties(broker, start_pool, vhost):
    # Given a worker type with no process: its queue keeps what the dispatcher routes.
    pool = start_pool("[DEFAULT]\nworkers: 0\n")
    broker.submit("recorder", {"id": "p", "data": [1, "two"]}, message_id="mid-1",
                  correlation_id="cid-1", reply_to="replies", headers={"trace": "abc"})
    broker.publish_raw(b"\x00binary\xff", message_id="mid-2", content_type="application/x-thing",
                       headers={"worker_type": "recorder2"})
    routed = wait_for(lambda: broker.drain("worker_recorder"), 10, "the routed workitem")
    props, body = routed[0]
    assert json.loads(body) == {"id": "p", "data": [1, "two"]}
    assert (props.message_id, props.correlation_id, props.reply_to) == ("mid-1", "cid-1", "replies")
    # (quorum queues add their own x-delivery-count to every delivery)
    assert {k: v for k, v in props.headers.items() if k != "x-delivery-count"} == {"trace": "abc"}
    assert props.delivery_mode == 2 and props.content_type == "application/json"
    raw = wait_for(lambda: broker.drain("worker_recorder2"), 10, "the header-routed message")
    assert raw[0][1] == b"\x00binary\xff"
    assert raw[0][0].content_type == "application/x-thing"
    assert pool.stop() == 0


@pytest.mark.timeout(60)
def test_dispatcher_routes_a_burst_with_many_messages_in_flight(broker, start_pool):
    pool = start_pool("[DEFAULT]\nworkers: 0\n")
    for n in range(2000):
        broker.submit("recorder", n)
    wait_for(lambda: broker.counts("worker_recorder")[0] == 2000, 30, "2000 routed")
    assert broker.counts("taskqueue")[0] == 0
    assert pool.stop() == 0


def test_a_worker_queue_deleted_under_the_dispatcher_is_declared_again_and_nothing_is_lost(
        broker, start_pool):
    pool = start_pool("[DEFAULT]\nworkers: 0\n")
    broker.submit("recorder", {"id": 1})
    wait_for(lambda: broker.counts("worker_recorder")[0] == 1, 10, "the first task routed")
    # When an operator deletes the queue the dispatcher had declared
    broker.channel.queue_delete("worker_recorder")
    broker.submit("recorder", {"id": 2}, message_id="after-delete")
    # Then the broker returns the copy, the input is requeued, the queue declared anew
    routed = wait_for(lambda: broker.drain("worker_recorder"), 15, "the second task routed")
    assert [p.message_id for p, _ in routed] == ["after-delete"]
    pool.wait_log(r"the broker returned a message for worker_recorder")
    assert broker.counts("taskqueue")[0] == 0
    assert pool.stop() == 0


def test_a_worker_whose_queue_is_deleted_starts_over_instead_of_idling(broker, start_pool, records):
    pool = start_pool(recorder_config(records))
    wait_for(lambda: broker.counts("worker_recorder")[1] == 1, 15, "the consumer")
    broker.channel.queue_delete("worker_recorder")
    # The broker cancels the consumer; the worker restarts and declares its queue again.
    pool.wait_log(r"recorder#0 pid=\d+ exit 3")
    wait_for(lambda: broker.counts("worker_recorder")[1] == 1, 15, "a consumer again")
    broker.submit("recorder", {"id": "after"})
    wait_for(records.all, 15, "a task done after the queue came back")
    assert pool.stop() == 0


def test_a_deleted_dead_letter_queue_is_declared_again_for_the_next_dead_letter(broker, start_pool):
    pool = start_pool("[DEFAULT]\nworkers: 0\n")
    broker.publish_raw(b"first", message_id="first")
    wait_for(lambda: broker.counts("taskqueue_dead")[0] == 1, 10, "the first dead letter")
    broker.channel.queue_delete("taskqueue_dead")
    broker.publish_raw(b"second", message_id="second")
    dead = wait_for(lambda: broker.drain("taskqueue_dead"), 15, "the second dead letter")
    assert [p.message_id for p, _ in dead] == ["second"]
    assert len(pool.wait_log(r"the broker returned a message for taskqueue_dead")) == 1  # no hot loop
    assert pool.stop() == 0
