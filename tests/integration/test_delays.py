"""Delayed tasks (taskqueue/protocol/delays.py) on the real broker: the chain of TTL queues
delivers a task to its worker no earlier than its delay and at most ~1 s later."""
import json
import subprocess
import time

import gevent
import pika
import pytest

from taskqueue.broker import amqp, blocking
from taskqueue.errors import TopologyError
from taskqueue.host.config import AmqpSettings
from taskqueue.protocol import delays, topology

from support import BROKER_HOST, TASKQUEUE, recorder_config, wait_for


def submit(pool, *args):
    return subprocess.run([TASKQUEUE, "submit", "--config", pool.config_path, *args],
                          capture_output=True, text=True, timeout=60)


def started(records, task_id):
    """The record of `task_id`'s start, once its worker began it."""
    found = [r for r in records.all("start") if r["id"] == task_id]
    return found[0] if found else None


def serving(broker, pool):
    wait_for(lambda: broker.counts("taskqueue")[1] == 1 and broker.counts("worker_recorder")[1] == 1,
             20, "the dispatcher and the recorder consuming")


def test_a_task_delayed_3s_reaches_its_worker_not_before_3s_from_its_publish_and_by_5s(
        broker, start_pool, records):
    # Given a pool, and the delay chain declared (so that the publish is all that is timed)
    pool = start_pool(recorder_config(records))
    serving(broker, pool)
    blocking.declare_delays_blocking(broker.channel, broker.settings)
    # When a task is published with a delay of 3 s, confirmed by the broker
    body = json.dumps({"id": "later"}).encode()
    props = pika.BasicProperties(content_type="application/json", message_id="m-later")
    before = time.time()
    blocking.publish_delayed_blocking(broker.channel, broker.settings, "recorder", body, props, 3)
    confirmed = time.time()
    # Then its worker starts it 3 s after the publish at the earliest, 5 s at the latest
    # (2 s for a loaded CI machine; a wrong level, a whole delay more, still fails)
    record = wait_for(lambda: started(records, "later"), 10, "the delayed task started")
    assert record["time"] - before >= 3.0, record["time"] - before
    assert record["time"] - confirmed <= 5.0, record["time"] - confirmed
    # with its body and properties, without the deaths of the chain's queues
    assert record["body"] == body.decode() and record["content_type"] == "application/json"
    assert "x-death" not in record["headers"] and "x-last-death-queue" not in record["headers"]
    assert delays.DELAYED_HEADER in record["headers"]
    assert [broker.counts(q)[0] for q in delays.LEVEL_QUEUES] == [0] * delays.LEVELS
    assert pool.stop() == 0


def test_submit_with_delay_0_goes_straight_through_and_with_delay_1_sends_the_workitem(
        broker, start_pool, records):
    pool = start_pool(recorder_config(records))
    serving(broker, pool)
    out = submit(pool, "--delay", "0", "recorder", '{"id": "now"}')
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.strip()) == 32 and out.stderr == ""
    wait_for(lambda: started(records, "now"), 5, "the undelayed task started")
    before = time.time()
    out = submit(pool, "--delay", "0.2", "recorder", '{"id": "soon"}')
    assert out.returncode == 0, out.stderr
    record = wait_for(lambda: started(records, "soon"), 10, "the task delayed 0.2 s started")
    assert record["time"] - before >= 1.0   # rounded up to a whole second, never down
    assert json.loads(record["body"]) == {"id": "soon"}
    assert pool.stop() == 0


@pytest.mark.parametrize("args, words", [
    (["--delay", "-1", "recorder", "{}"], "--delay: delay -1.0: expected a number of seconds >= 0"),
    (["--delay", "2000000", "recorder", "{}"], "--delay: delay 2000000.0 s is too long: at most 1048575 s"),
    (["--delay", "nan", "recorder", "{}"], "expected a number of seconds >= 0"),
    (["--delay", "soon", "recorder", "{}"], "argument --delay: 'soon' is not a number of seconds"),
    (["--delay", "3", "--wait", "recorder", "{}"], "--delay and --wait together"),
    (["--delay", "3", "--file", "-", "recorder"], "--file and --delay together"),
])
def test_submit_refuses_a_bad_delay_with_exit_2_and_submits_nothing(
        broker, start_pool, records, args, words):
    pool = start_pool(recorder_config(records, processes=0))
    out = submit(pool, *args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert words in out.stderr
    assert out.stdout == ""
    assert [broker.counts(q)[0] for q in delays.LEVEL_QUEUES] == [0] * delays.LEVELS


def test_status_says_how_many_tasks_wait_in_the_delay_queues(broker, start_pool, records):
    pool = start_pool(recorder_config(records))
    status = [TASKQUEUE, "status", "--config", pool.config_path]
    out = subprocess.run(status + ["--json"], capture_output=True, text=True, timeout=60)
    assert json.loads(out.stdout)["delayed"] == 0     # no delay queue exists yet
    for seconds in ("600", "601", "86400"):
        assert submit(pool, "--delay", seconds, "recorder", "{}").returncode == 0
    out = subprocess.run(status + ["--json"], capture_output=True, text=True, timeout=60)
    assert json.loads(out.stdout)["delayed"] == 3
    out = subprocess.run(status, capture_output=True, text=True, timeout=60)
    assert "\ndelayed tasks waiting: 3 (in taskqueue.delay.*)\n" in out.stdout
    assert pool.stop() == 0


# -- the gevent side: amqp.Session.publish_delayed ------------------------------------

def settings_of(vhost, broker_port, **extra):
    return AmqpSettings(host=BROKER_HOST, port=broker_port, vhost=vhost, **extra)


def test_a_session_publishes_delayed_tasks_declaring_the_chain_once(broker, vhost, broker_port):
    session = amqp.Session(settings_of(vhost, broker_port), "test delays").open()
    try:
        for n in range(3):
            before = time.time()
            session.publish_delayed(topology.TASK_QUEUE, "recorder", b"%d" % n,
                                    pika.BasicProperties(message_id=f"m{n}"), 1)
            taken = wait_for(lambda: broker.drain("taskqueue"), 5, "the delayed task in taskqueue")
            # Not before its second (the broker's TTL timer may fire a fraction of a
            # millisecond before this clock says a second went: 0.9997 s was seen).
            assert time.time() - before >= 0.99
            [(props, body)] = taken
            assert body == b"%d" % n and props.message_id == f"m{n}"
            assert props.headers["worker_type"] == "recorder" and props.delivery_mode == 2
        with pytest.raises(ValueError, match="too long"):
            session.publish_delayed(topology.TASK_QUEUE, "recorder", b"", None, 10**7)
        with pytest.raises(ValueError, match="not 'worker_other'"):
            session.publish_delayed("worker_other", "recorder", b"", None, 1)
        assert session.is_open
    finally:
        session.close()


def test_a_session_says_which_delay_queue_the_broker_refuses_at_once(broker, vhost, broker_port):
    # Given a level queue declared by someone else, otherwise
    broker.channel.queue_declare("taskqueue.delay.5", durable=True)
    session = amqp.Session(settings_of(vhost, broker_port), "test delays").open()
    try:
        with gevent.Timeout(10):
            with pytest.raises(TopologyError, match=r"queue 'taskqueue.delay.5' of the delay chain "
                               r"already exists with other arguments"):
                session.publish_delayed(topology.TASK_QUEUE, "recorder", b"x", None, 1)
        assert session.is_open     # only its confirm channel closed; the next one opens anew
        broker.channel.queue_delete("taskqueue.delay.5")
        session.publish_delayed(topology.TASK_QUEUE, "recorder", b"y", None, 0)
        assert wait_for(lambda: broker.drain("taskqueue"), 5, "the task")[0][1] == b"y"
    finally:
        session.close()


def test_a_dispatcher_binds_taskqueue_to_the_end_of_the_chain_again_when_it_was_declared_anew(
        broker, start_pool, records):
    # Given the chain declared, then taskqueue deleted (its binding goes with it)
    blocking.declare_delays_blocking(broker.channel, broker.settings)
    broker.channel.queue_delete("taskqueue")
    # When a dispatcher starts (it declares taskqueue anew)
    pool = start_pool(recorder_config(records))
    serving(broker, pool)
    # Then what leaves the chain reaches taskqueue, without any delayed publish re-declaring it
    broker.channel.basic_publish(delays.DELIVER_EXCHANGE, "", json.dumps({"id": "bound"}).encode(),
                                 pika.BasicProperties(headers={"worker_type": "recorder"},
                                                      delivery_mode=2), mandatory=True)
    wait_for(lambda: started(records, "bound"), 10, "the task from the end of the chain started")
    assert pool.stop() == 0
