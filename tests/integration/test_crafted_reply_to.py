"""A reply_to crafted by a submitter costs at most that reply (docs/07-security.md).

RabbitMQ closes the whole connection of whoever publishes to a direct reply-to name
whose token is no channel it knows (541 INTERNAL_ERROR): garbage, or on 3.x a
well-formed pid of a node that does not exist (support.CRAFTED). taskqueue's replies (a plugin's
channel.reply(), the worker's and the dispatcher's failure replies) go on a connection
of their own, so the connection that consumes or routes stays up: the task is settled
once, nothing is redelivered, and the next call on the same worker gets its reply.
"""
import json
import re
import subprocess

import pytest

from support import (CRAFTED, broker_version, closes_connection, recorder_config, serving,
                     wait_for)

REFUSED = (r"WARNING: a reply to amq\.rabbitmq\.reply-to\.\S+ is lost: the reply connection "
           r"closed as it went \(closed by the broker: 541 INTERNAL_ERROR\)")


def closing(broker):
    """The kinds of CRAFTED whose reply costs a connection on this broker."""
    return [kind for kind in CRAFTED if closes_connection(kind, broker_version(broker))]


def connections(vhost):
    """{connection name: [peer port, ...]} of the connections to `vhost`, from rabbitmqctl."""
    out = subprocess.run(["rabbitmqctl", "-q", "list_connections", "--no-table-headers",
                          "vhost", "peer_port", "client_properties"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    found = {}
    for line in out.splitlines():
        fields = line.split("\t")
        name = re.search(r'"connection_name","([^"]*)"', fields[-1]) if len(fields) > 2 else None
        if fields[0] == vhost and name:
            found.setdefault(name.group(1), []).append(int(fields[1]))
    return found


def unacked(vhost, queue):
    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "--no-table-headers",
                          "name", "messages_unacknowledged"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    return next((int(n) for name, n in (line.split() for line in out.splitlines())
                 if name == queue), 0)


def one(vhost, name):
    """The peer port of the one connection named `name`."""
    [port] = wait_for(lambda: connections(vhost).get(name), 20, f"the connection {name!r}")
    return port


@pytest.mark.timeout(120)
def test_a_crafted_reply_to_costs_the_worker_only_that_reply(
        broker, start_pool, records, client, vhost):
    pool = serving(broker, start_pool, recorder_config(records), "worker_recorder")
    consuming = one(vhost, "taskqueue worker recorder#0")
    # When tasks reply to crafted names: by the plugin's channel.reply(), and by the
    # worker's failure reply (the task raised), one hop (no dispatcher on the way)
    hostile = []
    for kind, reply_to in CRAFTED.items():
        for what in ({"reply": kind}, {"raise": True}):
            task_id = f"{kind}-{'reply' if 'reply' in what else 'raise'}"
            broker.submit_one_hop("recorder", {"id": task_id, **what}, message_id=task_id,
                                  reply_to=reply_to, correlation_id=f"c-{task_id}")
            hostile.append(task_id)
    # Then each is settled once, never delivered again: those that replied are done, those
    # that raised are dead-lettered
    wait_for(lambda: {t for t in hostile if t.endswith("-reply")} <= set(records.ids("done")),
             30, "the replying tasks done")
    wait_for(lambda: broker.counts("taskqueue_dead")[0] == 2, 30, "two dead letters")
    # and a legitimate call on the same worker process gets its reply right after
    reply = json.loads(client.call("recorder", {"id": "after", "reply": "ok"}, timeout=20))
    assert reply["reply"] == "ok"
    starts = [r for r in records.all("start") if r["id"] in hostile + ["after"]]
    assert sorted(r["id"] for r in starts) == sorted(hostile + ["after"]), "a task ran twice"
    assert not any(r["redelivered"] for r in starts)
    assert {r["pid"] for r in starts} == {reply["pid"]}, "the worker was replaced"
    wait_for(lambda: unacked(vhost, "worker_recorder") == 0, 10, "worker_recorder settled")
    assert broker.counts("worker_recorder")[0] == 0
    # and the worker's consuming connection is the one it had: no reconnect
    assert connections(vhost)["taskqueue worker recorder#0"] == [consuming]
    log = pool.log()
    assert "lost the broker" not in log
    # The refusals are said once (their names escaped, one word), then once when replies
    # go through again, with the count
    assert len(re.findall(REFUSED, log)) == 1, log[-3000:]
    lost = 2 * len(closing(broker))     # the plugin's reply and the failure reply
    assert re.search(rf"INFO: replies go through again: {lost} lost over \d+\.\ds", log), \
        log[-3000:]
    assert broker.counts("taskqueue_dead")[0] == 2      # and nothing more
    assert pool.stop() == 0


@pytest.mark.timeout(120)
def test_a_crafted_reply_to_costs_the_dispatcher_only_that_reply(
        broker, start_pool, records, vhost):
    pool = serving(broker, start_pool, recorder_config(records), "worker_recorder")
    [name] = wait_for(lambda: [n for n in connections(vhost) if n.startswith("taskqueue dispa")
                               and not n.endswith((" replies", " events"))], 20,
                               "the dispatcher's connection")
    routing = one(vhost, name)
    # When messages the dispatcher dead-letters (not routable) name crafted reply_to
    for kind, reply_to in CRAFTED.items():
        broker.publish_raw(f"nospace-{kind}".encode(), reply_to=reply_to,
                           correlation_id=f"c-{kind}")
    wait_for(lambda: broker.counts("taskqueue_dead")[0] == 2, 15, "the two dead letters")
    # Then routing goes on, on the same connection: a legitimate dead letter's failure
    # reply comes, and a call through the dispatcher gets its reply
    own = broker.channel.queue_declare("", exclusive=True).method.queue
    broker.publish_raw(b"nospace-legit", reply_to=own, correlation_id="c-legit")
    [(props, body)] = wait_for(lambda: broker.drain(own), 15, "the legitimate failure reply")
    assert props.correlation_id == "c-legit" and body.startswith(b"not routed: ")
    broker.submit("recorder", {"id": "through", "reply": 1}, reply_to=own,
                  correlation_id="c-through")
    [(props, body)] = wait_for(lambda: broker.drain(own), 15, "the routed task's reply")
    assert (props.correlation_id, json.loads(body)["reply"]) == ("c-through", 1)
    wait_for(lambda: unacked(vhost, "taskqueue") == 0, 10, "taskqueue settled")
    assert broker.counts("taskqueue")[0] == 0
    assert broker.counts("taskqueue_dead")[0] == 3      # each input dead-lettered once
    assert connections(vhost)[name] == [routing]
    log = pool.log()
    assert "lost the broker" not in log
    assert len(re.findall(REFUSED, log)) == 1, log[-3000:]
    lost = len(closing(broker))
    assert re.search(rf"INFO: replies go through again: {lost} lost over \d+\.\ds", log), \
        log[-3000:]
    assert pool.stop() == 0
