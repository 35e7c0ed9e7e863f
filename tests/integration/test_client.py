"""taskqueue.client on the real broker: threads sharing one Client, call() and
replies, refusals that raise, reconnecting, from_config, and gevent."""
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import taskqueue.client
from netfaults import TcpProxy
from support import (BROKER_HOST, config_text, nacking_vhost, recorder_config, serving,
                     wait_for)
from taskqueue.client import Client, ConnectionLost, PartlySubmitted, PublishRefused
from taskqueue.errors import BrokerUnreachable, ConfigError

ECHO = "[DEFAULT]\nworkers: 0\n\n[echo]\nworkers: 1\n"



@pytest.mark.timeout(180)
def test_eight_plain_threads_sharing_one_client_submit_1000_tasks_and_all_are_done(
        broker, start_pool, records, client):
    # Given a pool of recorders, and one Client shared by 8 threads (no gevent patching)
    serving(broker, start_pool, recorder_config(records, processes=4), "worker_recorder")
    ids, errors = {}, []

    def submit(thread):
        try:
            for n in range(125):
                task = f"t{thread}-{n}"
                ids[task] = client.submit("recorder", {"id": task})
        except Exception as exc:     # reported below: a thread's exception is otherwise lost
            errors.append(exc)
    threads = [threading.Thread(target=submit, args=(t,)) for t in range(8)]
    # When each submits 125 tasks at the same time
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    # Then each submit returned a distinct message id, and every task is done once
    assert errors == []
    assert len(ids) == 1000 and len(set(ids.values())) == 1000
    wait_for(lambda: len(records.ids()) >= 1000, 120,
             lambda: f"1000 tasks done ({len(records.ids())} so far)")
    assert sorted(records.ids()) == sorted(ids)


@pytest.mark.timeout(60)
def test_call_returns_the_reply_of_echo_and_times_out_without_one(broker, start_pool, client):
    serving(broker, start_pool, ECHO, "worker_echo")
    assert json.loads(client.call("echo", {"x": 1}, timeout=10)) == {"x": 1}
    assert json.loads(client.call("echo", "again", timeout=10)) == "again"   # the same connection
    # A type nobody serves: TimeoutError after the timeout, not before
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"no reply from nosuchtype to task [0-9a-f]{32} within 1 s"):
        client.call("nosuchtype", {}, timeout=1)
    assert 1 <= time.monotonic() - started < 5


@pytest.mark.timeout(60)
def test_call_returns_what_a_plugin_sent_with_channel_reply(broker, start_pool, records, client):
    serving(broker, start_pool, recorder_config(records), "worker_recorder")
    reply = json.loads(client.call("recorder", {"id": "r1", "reply": [1, 2]}, timeout=10))
    assert reply["id"] == "r1" and reply["reply"] == [1, 2]
    # A task submitted without reply_to: the plugin's reply goes nowhere, the task is done
    client.submit("recorder", {"id": "r2", "reply": "lost"})
    wait_for(lambda: "r2" in records.ids(), 20, "task r2 done")


@pytest.mark.timeout(60)
def test_submit_many_returns_the_ids_in_order_and_checks_every_item_first(broker, client):
    ids = client.submit_many("recorder", [{"n": n} for n in range(500)])
    assert len(set(ids)) == 500
    messages = wait_for(lambda: broker.counts("taskqueue")[0] == 500 and broker.drain("taskqueue"),
                        20, "500 tasks in taskqueue")
    assert [props.message_id for props, _ in messages] == ids
    # one hop, no worker_recorder yet: through the alternate exchange, the workitem itself
    assert [json.loads(body) for _, body in messages] == [{"n": n} for n in range(500)]
    assert all(props.headers["worker_type"] == "recorder" for props, _ in messages)
    # One bad item: nothing is sent
    with pytest.raises(ValueError, match=r"item 2: workitem for recorder: not JSON \(.*set"):
        client.submit_many("recorder", [1, 2, {3}])
    assert broker.counts("taskqueue")[0] == 0


@pytest.mark.timeout(60)
def test_a_publish_the_broker_returns_unroutable_raises_and_the_next_submit_works(broker, client):
    client.submit("recorder", 1)
    # When taskqueue is deleted behind the client's back (it declared it once)
    broker.channel.queue_delete("taskqueue")
    # Then the next submit is returned by the broker, and says so
    with pytest.raises(PublishRefused, match="neither worker_recorder nor taskqueue took it "
                                             "\\(unroutable"):
        client.submit("recorder", 2)
    # And the one after declares the queue again
    client.submit("recorder", 3)
    assert broker.counts("taskqueue")[0] == 1


@pytest.mark.timeout(60)
def test_a_publish_the_broker_refuses_raises_with_the_reason(broker, vhost, amqp_port):
    # Given a taskqueue that takes one message and refuses (nacks) the next (a classic
    # queue: it enforces the limit exactly)
    policy = ["rabbitmqctl", "-q", "set_policy", "-p", vhost, "--apply-to", "queues",
              "tq-test-client-max", "^taskqueue$", '{"max-length": 1, "overflow": "reject-publish"}']
    subprocess.run(policy, check=True)
    try:
        with Client(host=BROKER_HOST, port=amqp_port, vhost=vhost, queue_type="classic") as client:
            client.submit("recorder", 1)
            with pytest.raises(PublishRefused, match=r"refused the task for recorder \(into "
                                                     r"worker_recorder or taskqueue\) "
                                                     r"\(nack; 3 tries in 2 s\)"):
                client.submit("recorder", 2)
            with pytest.raises(PartlySubmitted, match=r"item 0: the broker refused it "
                                                      r"\(nack; 3 tries in 2 s\)") as info:
                client.submit_many("recorder", [3, 4])
            assert info.value.ids == [None, None]
        assert broker.counts("taskqueue")[0] == 1
    finally:
        subprocess.run(["rabbitmqctl", "-q", "clear_policy", "-p", vhost, "tq-test-client-max"],
                       check=True)


@pytest.mark.timeout(60)
def test_a_publish_nacked_every_time_is_tried_3_times_within_about_2_s_then_refused(
        amqp_port, broker_port):
    # Given task queues that take nothing: every publish is nacked (and its copy counted
    # in taskqueue_dead)
    with nacking_vhost(0, broker_port) as (vhost, broker), \
            Client(host=BROKER_HOST, port=amqp_port, vhost=vhost, queue_type="classic") as client:
        # When a task is submitted
        started = time.monotonic()
        with pytest.raises(PublishRefused) as info:
            client.submit("recorder", 1)
        elapsed = time.monotonic() - started
        # Then it was tried 3 times, 0.5 s and 1.5 s apart, and the error says so
        assert str(info.value).endswith("(nack; 3 tries in 2 s): is the queue full "
                                        "(max-length with reject-publish)?"), info.value
        assert 2.0 <= elapsed < 10, elapsed
        wait_for(lambda: broker.counts("taskqueue_dead")[0] >= 3, 10, "3 nacked copies")
        assert broker.counts("taskqueue_dead")[0] == 3
        assert broker.counts("taskqueue")[0] == 0
        # And submit_many tries each of its tasks 3 times too
        with pytest.raises(PartlySubmitted, match=r"item 0: the broker refused it "
                                                  r"\(nack; 3 tries in 2 s\)") as many:
            client.submit_many("recorder", [2, 3])
        assert many.value.ids == [None, None]
        wait_for(lambda: broker.counts("taskqueue_dead")[0] >= 9, 10, "9 nacked copies")
        assert broker.counts("taskqueue_dead")[0] == 9


@pytest.mark.timeout(60)
def test_a_publish_nacked_while_the_queue_is_full_is_taken_once_there_is_room(
        amqp_port, broker_port):
    # Given a taskqueue that holds 1 task, full
    with nacking_vhost(1, broker_port) as (vhost, broker), \
            Client(host=BROKER_HOST, port=amqp_port, vhost=vhost, queue_type="classic") as client:
        broker.publish_raw(b"filler", content_type="text/plain")
        outcome = {}

        def submit():
            try:
                outcome["id"] = client.submit("recorder", 1)
            except Exception as exc:   # shown by the assertion below
                outcome["error"] = exc
        submitting = threading.Thread(target=submit)
        submitting.start()
        # When the broker nacked the task once, and then a consumer takes the filler
        wait_for(lambda: broker.counts("taskqueue_dead")[0] >= 1, 10, "the first nack")
        assert broker.channel.basic_get("taskqueue", auto_ack=True)[2] == b"filler"
        submitting.join(10)
        # Then the submit, tried again, succeeds: the task is in taskqueue
        assert "id" in outcome, outcome
        [(props, body)] = broker.drain("taskqueue")
        assert props.message_id == outcome["id"]


def connections_named(name):
    out = subprocess.run(["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
                         capture_output=True, text=True, check=True).stdout
    return [line.split("\t", 1)[0] for line in out.splitlines() if name in line]


@pytest.mark.timeout(90)
def test_the_client_connects_again_after_the_broker_closed_its_connection(broker, vhost, amqp_port):
    name = f"tq-test-reconnect-{os.getpid()}-{time.monotonic_ns()}"
    with Client(host=BROKER_HOST, port=amqp_port, vhost=vhost, name=name) as client:
        client.submit("recorder", 1)
        [pid] = wait_for(lambda: connections_named(name), 20, "the client's connection")
        # When an operator closes it
        subprocess.run(["rabbitmqctl", "-q", "close_connection", pid, "closed by the test"],
                       check=True)
        # Then the next submit goes through a new one (the broker keeps the old one
        # listed until the client reads its close)
        client.submit("recorder", 2)
        assert broker.counts("taskqueue")[0] == 2
        [new_pid] = wait_for(lambda: [p for p in connections_named(name) if p != pid] and
                             connections_named(name), 20, "only a new connection")
        assert new_pid != pid
    # And close() closed it
    wait_for(lambda: not connections_named(name), 20, "the connection closed by close()")


@pytest.mark.timeout(60)
def test_a_client_with_no_broker_to_reach_says_which_it_tried(vhost):
    client = Client(url="amqp://guest:guest@127.0.0.1:1/x, amqp://guest:guest@127.0.0.1:2/x")
    # (a client starts at a random broker of the list: either may come first)
    with pytest.raises(ConnectionLost, match="cannot connect to the broker: ") as raised:
        client.submit("recorder", 1)
    assert sorted(re.findall(r"127\.0\.0\.1:(\d): ", str(raised.value))) == ["1", "2"]


@pytest.mark.timeout(60)
def test_submit_many_with_no_broker_to_reach_raises_broker_unreachable_at_once_as_submit_does():
    client = Client(url="amqp://guest:guest@127.0.0.1:1/x")
    for submit in (lambda: client.submit("recorder", 1),
                   lambda: client.submit_many("recorder", [1, 2])):
        started = time.monotonic()
        with pytest.raises(ConnectionLost, match="cannot connect to the broker: 127.0.0.1:1: ") \
                as raised:
            submit()
        # nothing was sent: not PartlySubmitted, and not after a wait for a close
        assert type(raised.value) is BrokerUnreachable
        assert time.monotonic() - started < 2


@pytest.fixture
def proxy(amqp_port):
    proxy = TcpProxy(amqp_port)
    yield proxy
    proxy.close()


def no_reply_within(seconds, what, call):
    """Run call(), which must raise ConnectionLost saying `what` had no reply from the
    broker in `seconds` s, after `seconds` s and well before heartbeats would tell."""
    started = time.monotonic()
    with pytest.raises(ConnectionLost, match=rf"^{what}: no reply from 127\.0\.0\.1:\d+ vhost "
                                             rf"'\S+' in {seconds}s$"):
        call()
    assert seconds <= time.monotonic() - started < seconds + 3


@pytest.mark.timeout(60)
def test_a_broker_that_stops_answering_fails_each_wait_of_the_client_within_its_timeout(
        broker, vhost, proxy, monkeypatch):
    # Given a client connected through a proxy, whose waits for the broker are 2 s
    monkeypatch.setattr(taskqueue.client, "BROKER_TIMEOUT", 2)
    client = Client(host=BROKER_HOST, port=proxy.port, vhost=vhost)
    client.submit("recorder", 1)
    # When the broker falls silent (the proxy passes nothing more, either way), a
    # confirm, a declare, and the publish of a call each fail within 2 s
    proxy.freeze()
    no_reply_within(2, "publishing the task for recorder", lambda: client.submit("recorder", 2))
    client.submit("recorder", 3)    # (a new connection: the proxy passes it)
    # (publish and call go through this thread's connection, submit through the
    # client's I/O thread's: both open before the proxy freezes)
    warm_up = lambda: client.publish("worker_other", b"warm", taskqueue.client.task_properties())
    warm_up()
    proxy.freeze()
    no_reply_within(2, "publishing to worker_other", lambda: client.publish(
        "worker_other", b"x", taskqueue.client.task_properties()))
    no_reply_within(2, "publishing the task for recorder", lambda: client.submit("recorder", 4))
    client.submit("recorder", 5)
    warm_up()
    proxy.freeze()
    no_reply_within(2, "publishing the task for recorder",
                    lambda: client.call("recorder", 6, timeout=20))
    no_reply_within(2, "publishing the task for recorder", lambda: client.submit("recorder", 7))
    # A broker that hangs once the connection is open: its channel never opens
    proxy.freeze_once_open = True
    no_reply_within(2, "opening a channel", lambda: client.submit("recorder", 8))
    no_reply_within(2, "opening a channel", lambda: client.publish(
        "worker_other", b"x", taskqueue.client.task_properties()))
    # And close() does not wait for a close-ok that never comes
    proxy.freeze_once_open = False
    client.submit("recorder", 9)
    proxy.freeze()
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < 5
    # What the broker confirmed is there; what it did not answer never reached it
    assert sorted(json.loads(body) for _, body in broker.drain("taskqueue")) == [1, 3, 5, 9]


@pytest.mark.timeout(60)
def test_from_config_uses_the_amqp_section_of_the_file(broker, workdir, vhost, amqp_port):
    path = os.path.join(workdir, "config.ini")
    with open(path, "w") as f:
        f.write(config_text(vhost, "[DEFAULT]\nworkers: 0\n", port=amqp_port))
    with Client.from_config(path) as client:
        task_id = client.submit("recorder", {"a": 1})
    [(props, body)] = wait_for(lambda: broker.drain("taskqueue"), 10, "the task")
    assert props.message_id == task_id and props.correlation_id == task_id
    assert (props.content_type, props.delivery_mode) == ("application/json", 2)
    with open(path, "a") as f:
        f.write("port: many\n")
    with pytest.raises(ConfigError, match=r"\[amqp\].*port"):
        Client.from_config(path)


GREENLETS = textwrap.dedent("""
    from gevent import monkey; monkey.patch_all()
    import json, sys, gevent
    from taskqueue.client import Client
    client = Client(host=sys.argv[1], port=int(sys.argv[2]), vhost=sys.argv[3])
    submitted = [gevent.spawn(lambda g=g: [client.submit("recorder", [g, n]) for n in range(10)])
                 for g in range(20)]
    replies = [gevent.spawn(client.call, "echo", {"greenlet": g}, 10) for g in range(10)]
    gevent.joinall(submitted + replies, raise_error=True)
    print(json.dumps({"submitted": sum(len(g.value) for g in submitted),
                      "replies": [json.loads(g.value) for g in replies]}))
    client.close()
""")


@pytest.mark.timeout(90)
def test_greenlets_of_a_monkey_patched_program_share_one_client(broker, start_pool, vhost,
                                                                amqp_port):
    serving(broker, start_pool, ECHO, "worker_echo")
    out = subprocess.run([sys.executable, "-c", GREENLETS, BROKER_HOST, str(amqp_port), vhost],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    # Each call got its own reply back, though all waited at the same time
    assert result == {"submitted": 200, "replies": [{"greenlet": g} for g in range(10)]}
    wait_for(lambda: broker.counts("worker_recorder")[0] == 200, 20, "200 tasks dispatched")


@pytest.mark.timeout(60)
def test_a_task_submitted_with_delay_3_is_done_after_3_s_and_by_4_s(broker, start_pool, records,
                                                                    client):
    serving(broker, start_pool, recorder_config(records), "worker_recorder")
    started = time.time()
    client.submit("recorder", {"id": "later"}, delay=3)
    [done] = wait_for(lambda: records.all("start"), 10, "the delayed task")
    assert 3 <= done["time"] - started <= 4.5


@pytest.mark.timeout(60)
def test_a_threads_connection_is_closed_when_the_thread_ends(broker, vhost, amqp_port):
    import gc
    name = f"tq-test-thread-end-{os.getpid()}-{time.monotonic_ns()}"
    client = Client(host=BROKER_HOST, port=amqp_port, vhost=vhost, name=name)
    # (publish, not submit: submit goes through the client's one connection)
    props = taskqueue.client.task_properties
    client.publish("taskqueue", b"0", props())       # this thread's connection
    thread = threading.Thread(target=client.publish, args=("taskqueue", b"1", props()))
    thread.start()
    thread.join(30)
    assert broker.counts("taskqueue")[0] == 2
    # When the thread has ended, its connection goes; this thread's stays
    gc.collect()
    wait_for(lambda: len(connections_named(name)) == 1, 20, "the ended thread's connection closed")
    client.close()
    wait_for(lambda: not connections_named(name), 20, "the connection closed by close()")
