"""One hop (taskqueue/protocol/onehop.py): a client that names the worker type publishes to
taskqueue.direct and the broker routes; a type with no queue yet goes through the
alternate exchange to taskqueue and the dispatcher. Real broker, real processes.

The Recorder plugin writes the routing key each task was delivered with: the type
(`recorder`) when the broker routed it one hop, `worker_recorder` when the
dispatcher forwarded it.
"""
import json
import os
import re
import subprocess
import sys
import textwrap
import urllib.parse

import pika
import pytest

from support import BROKER_HOST, recorder_config, bindings, wait_for
from taskqueue.broker import pikaparams
from taskqueue.client import PublishRefused
from taskqueue.errors import TopologyError

pytestmark = pytest.mark.timeout(90)

DISPATCHER_ONLY = "[DEFAULT]\nworkers: 0\n"
MESSAGES_DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs",
                            "02-messages-and-wire-format.md")



def done(records, task_id, timeout=30):
    return wait_for(lambda: next((r for r in records.all() if r["id"] == task_id), None),
                    timeout, f"task {task_id} done")


def dispatching(broker, start_pool, body=DISPATCHER_ONLY, command="dispatcher"):
    pool = start_pool(body, command=command)
    wait_for(lambda: broker.counts("taskqueue")[1] == 1, 20, "the dispatcher consuming")
    return pool


def test_a_one_hop_task_for_a_type_with_no_queue_yet_is_delivered_once_a_pool_for_it_starts(
        broker, start_pool, records, client, vhost):
    # Given a dispatcher, and no queue for the type
    dispatching(broker, start_pool)
    assert broker.counts("worker_recorder") == (0, 0)
    # When a task is submitted one hop (the Client's way) for that type
    client.submit("recorder", {"id": "first"})
    # Then it came through taskqueue: the dispatcher declared worker_recorder, bound it
    # to taskqueue.direct by its type, and forwarded the task there
    wait_for(lambda: broker.counts("worker_recorder")[0] == 1, 20, "the task in worker_recorder")
    wait_for(lambda: ("taskqueue.direct", "worker_recorder", "recorder") in bindings(vhost), 20,
             "worker_recorder bound by the dispatcher")
    # and the type's next task goes one hop
    client.submit("recorder", {"id": "second"})
    wait_for(lambda: broker.counts("worker_recorder")[0] == 2, 20, "the second task waiting")
    # When a pool for the type starts
    start_pool(recorder_config(records), command="workerpool")
    # Then both are delivered: the first by the dispatcher, the second by the broker alone,
    # each as the workitem in JSON with the worker_type header
    first, second = done(records, "first"), done(records, "second")
    assert first["routing_key"] == "worker_recorder" and second["routing_key"] == "recorder"
    for record, task_id in ((first, "first"), (second, "second")):
        assert json.loads(record["body"]) == {"id": task_id}
        assert record["content_type"] == "application/json"
        assert "worker_type" in record["headers"]
    assert broker.counts("taskqueue")[0] == 0


def test_a_one_hop_task_for_a_bad_type_name_is_dead_lettered_with_its_reason(broker, start_pool):
    # Given a dispatcher
    dispatching(broker, start_pool)
    # When a raw client publishes one hop for a type name taskqueue cannot have
    broker.submit_one_hop("mark/er", {"id": "bad"}, message_id="bad-type")
    # Then no queue took it by its routing key: it is dead-lettered with the reason
    dead = wait_for(lambda: broker.drain("taskqueue_dead"), 20, "the dead letter")
    [(props, body)] = dead
    assert props.message_id == "bad-type" and json.loads(body) == {"id": "bad"}
    assert props.headers["x-taskqueue-reason"] == (
        "header worker_type 'mark/er' is not 1-200 characters of letters, digits, '_', '.', '-'")
    assert props.headers["x-taskqueue-queue"] == "taskqueue"


def docs_one_hop_client(vhost, port, worker_type, task_id):
    """The pika example of the docs' "One hop", for this broker, type and task."""
    with open(MESSAGES_DOC) as f:
        text = f.read()
    section = text[text.index("### One hop, when the client names the type"):]
    block = re.search(r"\n((?:    .*\n|\n)+)", section[section.index("With pika:"):]).group(1)
    code = textwrap.dedent(block).strip() + "\n"
    assert code.startswith("import json, uuid, pika") and code.count('"resize"') == 2
    url = f"amqp://guest:guest@{BROKER_HOST}:{port}/{urllib.parse.quote(vhost, safe='')}"
    return (code.replace("amqp://guest:guest@localhost/%2F", url)
            .replace('"resize"', json.dumps(worker_type))
            .replace('{"path": "a.png"}', json.dumps({"id": task_id})))


def test_a_raw_pika_client_following_the_docs_reaches_the_worker_in_one_hop(
        broker, start_pool, records, vhost, amqp_port):
    # Given a pool for the type and no dispatcher anywhere: nothing moves what lands in taskqueue
    start_pool(recorder_config(records), command="workerpool")
    wait_for(lambda: broker.counts("worker_recorder")[1] == 1, 20, "the recorder consuming")
    assert ("taskqueue.direct", "worker_recorder", "recorder") in bindings(vhost)
    # When the docs' pika example runs, as its own program
    code = docs_one_hop_client(vhost, amqp_port, "recorder", "readme")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    # Then the worker got it from the broker directly (routing key: the type), and
    # taskqueue, which the example declared and bound, never held it
    record = done(records, "readme")
    assert record["routing_key"] == "recorder"
    assert json.loads(record["body"]) == {"id": "readme"}
    assert record["content_type"] == "application/json"
    assert broker.counts("taskqueue") == (0, 0)
    assert ("taskqueue.unrouted", "taskqueue", "") in bindings(vhost)


def test_the_specifications_plain_text_client_and_the_envelope_still_go_through_the_dispatcher(
        broker, start_pool, records):
    # Given a pool for the type and its dispatcher (the type's queue bound to taskqueue.direct)
    dispatching(broker, start_pool, recorder_config(records), command="run")
    wait_for(lambda: broker.counts("worker_recorder")[1] == 1, 20, "the recorder consuming")
    # When the specification's client and an envelope client publish to taskqueue
    connection = pika.BlockingConnection(pika.ConnectionParameters(
        BROKER_HOST, broker.port, virtual_host=broker.vhost,
        credentials=pika.PlainCredentials("guest", "guest")))
    channel = connection.channel()
    channel.basic_publish(exchange='', routing_key='taskqueue', body='recorder some work',
                          properties=pika.BasicProperties(delivery_mode=2, message_id="spec"))
    connection.close()
    broker.submit("recorder", {"id": "envelope"})
    # Then the dispatcher forwarded each, as before
    spec, envelope = done(records, "spec"), done(records, "envelope")
    assert (spec["body"], spec["content_type"], spec["routing_key"]) == (
        "some work", "text/plain", "worker_recorder")
    assert (json.loads(envelope["body"]), envelope["content_type"], envelope["routing_key"]) == (
        {"id": "envelope"}, "application/json", "worker_recorder")


def test_a_broker_with_queues_of_the_previous_version_gets_its_bindings_as_processes_start(
        broker, start_pool, records, vhost):
    # Given a broker as the previous taskqueue left it: taskqueue and worker_recorder
    # declared, a task waiting in each, no one-hop exchange, no binding
    for exchange in ("taskqueue.direct", "taskqueue.unrouted"):
        broker.channel.exchange_delete(exchange)
    broker.publish_raw(b'{"worker_type": "recorder", "workitem": {"id": "old-queued"}}',
                       content_type="application/json")
    broker.publish_raw(b'{"id": "old-routed"}', queue="worker_recorder",
                       content_type="application/json")
    assert not bindings(vhost)
    # When the new worker pool starts (no dispatcher yet)
    start_pool(recorder_config(records), command="workerpool")
    # Then the task already in worker_recorder is done, and the queue is bound
    done(records, "old-routed")
    wait_for(lambda: ("taskqueue.direct", "worker_recorder", "recorder") in bindings(vhost), 20,
             "worker_recorder bound by its worker")
    # so a one-hop task reaches it without any dispatcher
    raw = pika.BlockingConnection(pika.ConnectionParameters(
        BROKER_HOST, broker.port, virtual_host=vhost,
        credentials=pika.PlainCredentials("guest", "guest")))
    channel = raw.channel()
    channel.confirm_delivery()
    channel.basic_publish("taskqueue.direct", "recorder", b'{"id": "new"}', pika.BasicProperties(
        delivery_mode=2, content_type="application/json", headers={"worker_type": "recorder"}),
        mandatory=True)
    assert done(records, "new")["routing_key"] == "recorder"
    # And once the new dispatcher starts, taskqueue is bound to the alternate exchange
    # and the task that waited in it is routed
    dispatching(broker, start_pool)
    done(records, "old-queued")
    assert ("taskqueue.unrouted", "taskqueue", "") in bindings(vhost)
    # so a task for a type without a queue, published without declaring anything, lands there
    channel.basic_publish("taskqueue.direct", "nosuchtype", b"1", pika.BasicProperties(
        delivery_mode=2, headers={"worker_type": "nosuchtype"}), mandatory=True)
    wait_for(lambda: broker.counts("worker_nosuchtype")[0] == 1, 20, "nosuchtype routed")
    raw.close()


def test_a_confirm_without_a_return_means_the_task_is_in_a_queue(broker, vhost, client):
    # Given the one-hop exchanges but no taskqueue (deleted behind the client's back)
    client.submit("recorder", 1)                      # declares everything once
    broker.channel.queue_delete("taskqueue")
    # When a one-hop task for a type with no queue is published, mandatory
    # Then the broker returns it (the alternate exchange routed it nowhere): never acked away
    with pytest.raises(pika.exceptions.UnroutableError):
        broker.channel.basic_publish("taskqueue.direct", "recorder", b"2", pika.BasicProperties(
            delivery_mode=2, headers={"worker_type": "recorder"}), mandatory=True)
    with pytest.raises(PublishRefused, match=r"the broker returned the task for recorder: neither "
                                             r"worker_recorder nor taskqueue took it"):
        client.submit("recorder", 3)
    # And the client's next submit declares and binds taskqueue again
    client.submit("recorder", 4)
    assert broker.counts("taskqueue")[0] == 1


def test_a_worker_queue_the_client_declares_is_bound_as_every_declarer_binds_it(
        broker, client, vhost):
    # When the client publishes a message of its own to worker_recorder, declaring it
    client.publish("worker_recorder", b'{"id": "direct"}', pikaparams.properties(delivery_mode=2))
    # Then the queue is bound by its type, so one-hop tasks for it go straight there
    assert ("taskqueue.direct", "worker_recorder", "recorder") in bindings(vhost)
    client.submit("recorder", {"id": "one hop"})
    wait_for(lambda: broker.counts("worker_recorder")[0] == 2, 10, "both in worker_recorder")
    assert broker.counts("taskqueue")[0] == 0


def test_a_one_hop_exchange_of_other_settings_stops_only_one_hop_saying_how_to_fix_it(
        broker, start_pool, records, client):
    # Given a taskqueue.direct someone declared without the alternate exchange
    broker.channel.exchange_delete("taskqueue.direct")
    broker.channel.exchange_declare("taskqueue.direct", exchange_type="direct", durable=True)
    try:
        # When a pool and its dispatcher start
        pool = dispatching(broker, start_pool, recorder_config(records), command="run")
        wait_for(lambda: broker.counts("worker_recorder")[1] == 1, 20, "the recorder consuming")
        # Then each says what is wrong and how to fix it, and keeps working
        pool.wait_log(r"exchange 'taskqueue.direct' already exists with other settings .*"
                      r"inequivalent arg 'alternate-exchange'.* Delete it \(rabbitmqadmin "
                      r"delete exchange name=taskqueue.direct", count=2)
        broker.submit("recorder", {"id": "through taskqueue"})
        done(records, "through taskqueue")
        # and the client refuses to publish one hop, with the same sentence
        with pytest.raises(TopologyError, match=r"exchange 'taskqueue.direct' already exists "
                                                r"with other settings"):
            client.submit("recorder", {"id": "never sent"})
        assert pool.stop() == 0
    finally:
        broker.channel.exchange_delete("taskqueue.direct")
