"""The dispatcher: the ways in (plain text, envelope, header, format plugins), routing,
properties kept, and malformed input dead-lettered."""
import json
import re

import pika
import pytest

from support import BROKER_HOST, wait_for, recorder_config

MALFORMED = [
    # Plain text, the specification's "<worker_type> <workitem>" (no content type, or text/plain)
    ("no space", b"worker1", {}, 'plain-text body \'worker1\' has no space: expected '
     '"<worker_type> <workitem>", e.g. "worker1 some work"'),
    ("leading space", b" leading-space", {}, "plain-text body ' leading-space' starts with a space"),
    ("bad plain type", b"bad/type work", {"content_type": "text/plain; charset=utf-8"},
     "plain-text worker type 'bad/type' is not 1-200 characters"),
    ("not json", b"hello", {}, "plain-text body 'hello' has no space"),
    ("invalid utf-8", b"\xff\xfe\x00garbage", {}, "has no space"),
    ("empty body", b"", {}, "plain-text body is empty"),
    ("array", b"[1, 2]", {}, "plain-text worker type '[1,'"),
    ("content type", b'{"worker_type": "recorder", "workitem": {"id": "x"}}',
     {"content_type": "text/plain"}, "plain-text worker type '{\"worker_type\":'"),
    # The JSON envelope (a body starting with "{", or application/json)
    ("bad json", b"{hello", {}, "body is not JSON"),
    ("string", b'"recorder"', {"content_type": "application/json"}, "envelope is a JSON string"),
    ("no type", b'{"workitem": 1}', {}, "envelope has no worker_type"),
    ("number type", b'{"worker_type": 5, "workitem": 1}', {}, "worker_type is a JSON number"),
    ("null type", b'{"worker_type": null, "workitem": 1}', {}, "worker_type is a JSON null"),
    ("empty type", b'{"worker_type": "", "workitem": 1}', {}, "is not 1-200 characters"),
    ("bad chars", b'{"worker_type": "a/b", "workitem": 1}', {}, "is not 1-200 characters"),
    ("overlong", json.dumps({"worker_type": "x" * 201, "workitem": 1}).encode(), {},
     "is not 1-200 characters"),
    ("no workitem", b'{"worker_type": "recorder"}', {}, "envelope has no workitem"),
    ("NaN", b'{"worker_type": "recorder", "workitem": NaN}', {}, "body is not JSON"),
    ("deep", b"[" * 100000, {"content_type": "application/json"}, "nested too deeply"),
    # Neither
    ("unknown content type", b"recorder x", {"content_type": "application/xml"},
     "content type 'application/xml' is not understood"),
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


def test_the_specification_client_reaches_worker1_with_the_text_after_the_space(
        broker, start_pool, records, vhost, broker_port):
    # Given worker1 (the Recorder plugin) and a dispatcher, both consuming
    pool = start_pool(f"[DEFAULT]\nworkers: 0\n\n[worker1]\nworkers: 1\nrecord_dir: {records.path}\n")
    wait_for(lambda: broker.counts("worker_worker1")[1] == 1 and broker.counts("taskqueue")[1] == 1,
             15, "worker1 and the dispatcher consuming")
    # When the specification's test client publishes, exactly as it did: plain text, no content type
    connection = pika.BlockingConnection(pika.ConnectionParameters(
        BROKER_HOST, broker_port, virtual_host=vhost,
        credentials=pika.PlainCredentials("guest", "guest")))
    channel = connection.channel()
    channel.basic_publish(exchange='', routing_key='taskqueue', body='worker1 some work',
                          properties=pika.BasicProperties(delivery_mode=2))
    connection.close()
    # Then handle_task of worker1 gets the text after the space, as text/plain
    record = wait_for(records.all, 15, "worker1's task done")[0]
    assert (record["body"], record["content_type"]) == ("some work", "text/plain")
    assert record["routing_key"] == "worker_worker1"
    assert broker.counts("taskqueue_dead")[0] == 0
    assert pool.stop() == 0


WORKFLOW = "application/x-tqtest-workflow+json"
PICKY = "application/x-tqtest-picky"
BROKEN = "application/x-tqtest-broken"


def collect(broker, queue, count, what):
    """Drain `queue` until `count` messages came: {message id: (properties, body)}."""
    got = {}

    def enough():
        got.update((props.message_id, (props, body)) for props, body in broker.drain(queue))
        return len(got) >= count
    wait_for(enough, 15, what)
    return got


def test_format_plugins_read_their_content_type_and_a_broken_one_dead_letters_only_its_own(
        broker, start_pool):
    # Given a dispatcher with the tqtest formats installed, one of which fails to import
    pool = start_pool("[DEFAULT]\nworkers: 0\n", env={"TQTEST_BROKEN_FORMAT": "1"})
    pool.wait_log(rf"ERROR: format {re.escape(BROKEN)} \(tqtest.brokenformat:read from "
                  rf"taskqueue-test-plugins [\d.]+\) failed to load: ModuleNotFoundError: No module "
                  rf"named 'tqtest_no_such_dependency'; messages of content type {re.escape(BROKEN)} "
                  rf"are dead-lettered")
    pool.wait_log(rf"INFO: format {re.escape(WORKFLOW)} \(tqtest.formats:read_workflow")
    # When messages of every format, good and bad, and of the built-in readings arrive
    broker.publish_raw(json.dumps({"step": "recorder", "data": {"id": "wf"}}).encode(),
                       content_type=WORKFLOW, message_id="wf", headers={"trace": "t1"})
    broker.publish_raw(b'{"no": "step"}', content_type=WORKFLOW, message_id="wf-bad")
    broker.publish_raw(b"fine", content_type=PICKY + "; charset=utf-8", message_id="picky")
    broker.publish_raw(b"bad input", content_type=PICKY, message_id="picky-bad")
    broker.publish_raw(b"recorder anything", content_type=BROKEN, message_id="broken")
    broker.publish_raw(b"recorder plain work", message_id="plain")
    broker.submit("recorder", {"id": "env"}, message_id="env")
    # Then each format's messages went where it said, the content type kept ...
    routed = collect(broker, "worker_recorder", 4, "4 routed")
    assert set(routed) == {"wf", "picky", "plain", "env"}
    props, body = routed["wf"]
    assert (json.loads(body), props.content_type, props.headers.get("trace")) == \
        ({"id": "wf"}, WORKFLOW, "t1")
    assert routed["picky"][1] == b"fine" and routed["picky"][0].content_type.startswith(PICKY)
    assert routed["plain"][1] == b"plain work" and routed["plain"][0].content_type == "text/plain"
    # ... and what a format refused, or could not read for failing to load, is dead-lettered
    dead = collect(broker, "taskqueue_dead", 3, "3 dead-lettered")
    reasons = {mid: props.headers["x-taskqueue-reason"] for mid, (props, _) in dead.items()}
    assert reasons["wf-bad"] == (f"format {WORKFLOW} (tqtest.formats:read_workflow from "
                                 f"taskqueue-test-plugins 0.1.0) refused the body: ValueError: "
                                 f'a workflow message is {{"step": TYPE, "data": ...}}')
    assert "refused the body: ValueError: picky refuses b'bad input'" in reasons["picky-bad"]
    assert f"format {BROKEN} (tqtest.brokenformat:read" in reasons["broken"]
    assert "failed to load: ModuleNotFoundError" in reasons["broken"]
    assert dead["broken"][1] == b"recorder anything"   # kept as it came
    assert len(pool.wait_log(r"dispatcher#0 pid=\d+ STARTING -> RUNNING")) == 1
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
