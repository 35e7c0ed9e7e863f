"""Hostile messages (issue 20, item 2): what anyone who may publish to the vhost can send
breaks no connection and starves no other task. Real broker, real processes.

A header table nested 700 levels deep (RabbitMQ 3.10 takes it) made pika raise
RecursionError while it read the content header, before any code of ours ran: the
connection dropped and the message came back for ever, taking the tasks prefetched
behind it along. Each is now dead-lettered once, with its reason, and its raw headers
kept; every other message is served by the same child.
"""
import json
import re
import struct
import subprocess

import pytest

from support import (BROKER_HOST, TASKQUEUE, amqp_key, amqp_table, declare_one_hop, deep_table,
                     recorder_config, stand_in_echo_worker, wait_for)
from taskqueue.broker import fielddecode
from taskqueue.client import Client
from taskqueue.host.config import AmqpSettings
from taskqueue.protocol.topology import queue_arguments

pytestmark = pytest.mark.timeout(120)
fielddecode.install()   # this test's own client reads such messages too

GOOD = [f"good-{i}" for i in range(6)]
#: A timestamp in the year 33658: RabbitMQ takes it, pika's datetime cannot hold it.
FAR_TIMESTAMP = amqp_table(amqp_key("when") + b"T" + struct.pack(">Q", 10**12))


def done_ids(records):
    return {r["id"] for r in records.all()}


def dead_letters(broker, count, timeout=40):
    """Wait until taskqueue_dead holds `count` letters, then take them all."""
    wait_for(lambda: broker.counts("taskqueue_dead")[0] >= count, timeout,
             f"{count} dead letter(s)")
    return broker.drain("taskqueue_dead")


def children_after_start(pool, count):
    return wait_for(lambda: sorted(pool.children()) if len(pool.children()) == count else None,
                    20, f"{count} children")


def publish_good_and_bad(broker, bad_raw, bad_id, one_hop=False):
    """Three good tasks, the bad one, three more: all in the queue before anyone consumes."""
    for task_id in GOOD[:3]:
        send_good(broker, task_id, one_hop)
    if one_hop:
        broker.submit_one_hop("recorder", {"id": bad_id}, raw_headers=bad_raw, message_id=bad_id)
    else:
        broker.publish_raw(json.dumps({"worker_type": "recorder", "workitem": {"id": bad_id}}
                                      ).encode(), raw_headers=bad_raw, message_id=bad_id,
                           content_type="application/json")
    for task_id in GOOD[3:]:
        send_good(broker, task_id, one_hop)


def send_good(broker, task_id, one_hop):
    if one_hop:
        broker.submit_one_hop("recorder", {"id": task_id}, message_id=task_id)
    else:
        broker.submit("recorder", {"id": task_id}, message_id=task_id)


def bind_worker_queue(broker):
    """worker_recorder as a pool declares it, bound for one hop, before any pool runs."""
    declare_one_hop(broker.channel)
    broker.channel.queue_declare("worker_recorder", durable=True,
                                 arguments=queue_arguments("worker_recorder", AmqpSettings()))
    broker.channel.queue_bind("worker_recorder", "taskqueue.direct", routing_key="recorder")


@pytest.mark.parametrize("kind", ["deep", "far-timestamp"])
def test_a_hostile_header_sent_to_taskqueue_is_dead_lettered_once_and_every_other_task_served(
        broker, start_pool, records, kind):
    raw = deep_table(700) if kind == "deep" else FAR_TIMESTAMP
    # Given the bad message among good ones, all waiting in taskqueue
    publish_good_and_bad(broker, raw, kind)
    # When a dispatcher and a worker start (the dispatcher prefetches them all at once)
    pool = start_pool(recorder_config(records), command="run")
    children = children_after_start(pool, 2)
    # Then every good task is done
    wait_for(lambda: done_ids(records) >= set(GOOD), 40, "the good tasks done")
    # and the bad one is dead-lettered once, with a reason saying what was wrong and its
    # raw headers kept byte for byte
    [(props, body)] = dead_letters(broker, 1)
    assert props.message_id == kind and json.loads(body)["workitem"] == {"id": kind}
    reason = props.headers["x-taskqueue-reason"]
    assert reason.startswith("headers not decoded: "), reason
    assert ("nested deeper than 32 levels" if kind == "deep" else "timestamp") in reason
    assert props.headers["x-taskqueue-queue"] == "taskqueue"
    assert props.headers["x-taskqueue-raw-headers"] == raw
    # by the same children: none restarted
    assert sorted(pool.children()) == children
    assert "RecursionError" not in pool.log()
    assert kind not in done_ids(records)


def test_a_header_nested_700_deep_sent_one_hop_is_dead_lettered_by_the_worker_once(
        broker, start_pool, records):
    # Given worker_recorder bound for one hop, holding the bad message among good ones
    bind_worker_queue(broker)
    publish_good_and_bad(broker, deep_table(700), "deep", one_hop=True)
    # When the pool starts (no dispatcher: the broker routed them straight to the worker queue)
    pool = start_pool(recorder_config(records), command="workerpool")
    children = children_after_start(pool, 1)
    # Then every good task is done, the plugin never saw the bad one
    wait_for(lambda: done_ids(records) >= set(GOOD), 40, "the good tasks done")
    assert "deep" not in done_ids(records) and "deep" not in done_ids_started(records)
    # and it is dead-lettered once, from the worker queue, with its reason and raw headers
    [(props, body)] = dead_letters(broker, 1)
    assert props.message_id == "deep"
    assert props.headers["x-taskqueue-reason"].startswith(
        "headers not decoded: nested deeper than 32 levels")
    assert props.headers["x-taskqueue-queue"] == "worker_recorder"
    assert props.headers["x-taskqueue-worker-type"] == "recorder"
    assert props.headers["x-taskqueue-raw-headers"] == deep_table(700)
    assert sorted(pool.children()) == children
    assert broker.counts("worker_recorder")[0] == 0


def done_ids_started(records):
    return {r["id"] for r in records.all("start")}


def run_tool(*args):
    return subprocess.run([TASKQUEUE, *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def test_dead_list_and_requeue_read_a_dead_letter_whose_headers_cannot_be_decoded(
        broker, start_pool, records, workdir):
    # Given, in taskqueue_dead, one of taskqueue's own dead letters of a deep-header
    # message, and the deep-header message itself (as the broker's delivery limit
    # dead-lettered it before this was fixed)
    publish_good_and_bad(broker, deep_table(700), "ours")
    pool = start_pool(recorder_config(records), command="run")
    wait_for(lambda: broker.counts("taskqueue_dead")[0] == 1, 40, "the dead letter")
    broker.publish_raw(b'{"worker_type": "recorder", "workitem": {"id": "raw"}}',
                       queue="taskqueue_dead", raw_headers=deep_table(700), message_id="raw",
                       content_type="application/json")
    # When the operator lists them
    out = run_tool("dead", "list", "--json", "--config", pool.config_path)
    # Then both are shown, each with why
    assert out.returncode == 0, out.stderr
    letters = {letter["id"]: letter for letter in json.loads(out.stdout)}
    assert set(letters) == {"ours", "raw"}
    assert letters["ours"]["reason"].startswith("headers not decoded: nested deeper than 32")
    assert letters["ours"]["queue"] == "taskqueue"
    assert letters["raw"]["reason"].startswith("headers not decoded: nested deeper than 32")
    # When the operator requeues them
    out = run_tool("dead", "requeue", "--all", "--config", pool.config_path)
    # Then neither goes (a copy would lose its headers): it says so, and both stay
    assert out.returncode == 1, out.stdout + out.stderr
    for task_id in ("ours", "raw"):
        assert (f"{task_id} not requeued, it stays in taskqueue_dead: its headers could not "
                f"be decoded") in out.stderr, out.stderr
    wait_for(lambda: broker.counts("taskqueue_dead")[0] == 2, 20, "both still dead")


def test_a_reply_with_undecodable_headers_still_reaches_client_call(broker, vhost):
    # Given a stand-in worker that answers every echo task with a reply nested 700 deep
    with stand_in_echo_worker(broker.port, vhost, lambda n: deep_table(700)):
        # When a client calls it
        with Client(host=BROKER_HOST, port=broker.port, vhost=vhost) as client:
            reply = client.call("echo", {"x": 1}, timeout=20)
        # Then the reply's body comes back; its headers broke nothing
        assert reply == b"the answer"


def wait_consuming(broker, queue):
    wait_for(lambda: broker.counts(queue)[1] >= 1, 20, f"a consumer on {queue}")


def test_a_body_over_max_body_size_is_dead_lettered_once_on_either_path(
        broker, start_pool, records):
    # Given a dispatcher and a worker taking bodies of at most 1 KiB
    pool = start_pool(recorder_config(records), command="run", amqp_extra="max_body_size: 1 KiB\n")
    wait_consuming(broker, "taskqueue")
    wait_consuming(broker, "worker_recorder")
    children = sorted(pool.children())
    # When a bigger task comes through the dispatcher and another one hop, among good ones
    big = {"id": "big", "pad": "x" * 2000}
    broker.submit("recorder", dict(big, id="big-dispatched"), message_id="big-dispatched")
    broker.submit_one_hop("recorder", dict(big, id="big-onehop"), message_id="big-onehop")
    for task_id in GOOD:
        send_good(broker, task_id, one_hop=task_id.endswith(("1", "3", "5")))
    # Then the good ones are done, and each big one is dead-lettered once, saying why
    wait_for(lambda: done_ids(records) >= set(GOOD), 40, "the good tasks done")
    letters = {props.message_id: props for props, _ in dead_letters(broker, 2)}
    assert set(letters) == {"big-dispatched", "big-onehop"}
    assert letters["big-dispatched"].headers["x-taskqueue-queue"] == "taskqueue"
    assert letters["big-onehop"].headers["x-taskqueue-queue"] == "worker_recorder"
    for props in letters.values():
        assert re.fullmatch(r"body is \d+ bytes, more than \[amqp\] max_body_size \(1024 bytes\)",
                            props.headers["x-taskqueue-reason"])
    assert not {"big-dispatched", "big-onehop"} & done_ids_started(records)
    assert sorted(pool.children()) == children


def test_forged_taskqueue_headers_and_a_huge_priority_are_not_passed_on_as_taskqueues_own(
        broker, start_pool):
    # Given a dispatcher alone (what it forwards stays in worker_recorder)
    start_pool("[DEFAULT]\nworkers: 0\n", command="dispatcher")
    wait_consuming(broker, "taskqueue")
    # When a publisher sends a task with taskqueue's dead-letter headers and priority 200,
    # and tasks whose retry count or due time is not what taskqueue writes
    forged = {"x-taskqueue-reason": "forged", "x-taskqueue-worker-type": "victim",
              "x-taskqueue-exit": "\x1b[2J", "x-taskqueue-raw-headers": b"x", "mine": "kept",
              "x-taskqueue-retries": 2}
    broker.submit("recorder", {"id": "forged"}, message_id="forged", headers=forged, priority=200)
    for task_id, name, value in (("text-retries", "x-taskqueue-retries", "3"),
                                 ("huge-retries", "x-taskqueue-retries", 2**40),
                                 ("negative-retries", "x-taskqueue-retries", -1),
                                 ("text-due", "x-taskqueue-delayed-until", "soon"),
                                 ("text-expires", "x-taskqueue-expires", "1700000000000")):
        broker.submit("recorder", {"id": task_id}, message_id=task_id, headers={name: value})
    # Then the first goes on without the forged headers, its priority 9
    [(props, body)] = wait_for(lambda: broker.drain("worker_recorder"), 20, "the forwarded task")
    assert json.loads(body) == {"id": "forged"} and props.priority == 9
    headers = {k: v for k, v in props.headers.items() if k != "x-delivery-count"}   # the broker's
    assert headers == {"mine": "kept", "x-taskqueue-retries": 2}
    # and the others are dead-lettered, each saying which header and what it must be
    letters = {p.message_id: p.headers for p, _ in dead_letters(broker, 5)}
    assert letters["text-retries"]["x-taskqueue-reason"] == (
        "header x-taskqueue-retries is '3': expected a retry count, an integer from 0 to "
        "2147483647")
    assert letters["huge-retries"]["x-taskqueue-reason"].startswith(
        "header x-taskqueue-retries is 1099511627776: expected a retry count")
    assert letters["negative-retries"]["x-taskqueue-reason"].startswith(
        "header x-taskqueue-retries is -1: expected a retry count")
    assert letters["text-due"]["x-taskqueue-reason"].startswith(
        "header x-taskqueue-delayed-until is 'soon': expected when the task is due")
    assert letters["text-expires"]["x-taskqueue-reason"] == (
        "header x-taskqueue-expires is '1700000000000': expected when the task expires, in "
        "epoch milliseconds, an integer from 0 to 9223372036854775807")


def test_a_one_hop_task_with_forged_headers_is_refused_and_neither_crashes_nor_misleads(
        broker, start_pool, records):
    # Given a worker, retrying what raises
    pool = start_pool(recorder_config(records, extra="max_retries: 2\n"), command="workerpool")
    wait_consuming(broker, "worker_recorder")
    children = sorted(pool.children())
    # When one-hop tasks come with a text retry count, a huge one, and forged dead-letter headers
    broker.submit_one_hop("recorder", {"id": "text"}, message_id="text",
                          headers={"x-taskqueue-retries": "many"})
    broker.submit_one_hop("recorder", {"id": "huge", "raise": True}, message_id="huge",
                          headers={"x-taskqueue-retries": 2**40})
    broker.submit_one_hop("recorder", {"id": "forged"}, message_id="forged",
                          headers={"x-taskqueue-reason": "forged", "x-taskqueue-exit": "9"})
    broker.submit_one_hop("recorder", {"id": "after"}, message_id="after")
    # Then the bad counts and the forged headers are dead-lettered with their reason
    # (the broker's copy of a forged one would keep its lie were it rejected later),
    # and the same process serves the task after them
    wait_for(lambda: "after" in done_ids(records), 30, "the good task done")
    letters = {p.message_id: p.headers for p, _ in dead_letters(broker, 3)}
    assert set(letters) == {"text", "huge", "forged"}
    assert letters["forged"]["x-taskqueue-reason"] == (
        "headers 'x-taskqueue-exit', 'x-taskqueue-reason' set by its publisher: only "
        "taskqueue's dead letters carry them")
    assert "x-taskqueue-exit" not in letters["forged"]
    assert letters["text"]["x-taskqueue-reason"].startswith(
        "header x-taskqueue-retries is 'many': expected a retry count")
    assert letters["huge"]["x-taskqueue-reason"].startswith(
        "header x-taskqueue-retries is 1099511627776")
    assert letters["huge"]["x-taskqueue-queue"] == "worker_recorder"
    assert not {"text", "huge", "forged"} & done_ids_started(records)
    assert sorted(pool.children()) == children
