"""The worker's plumbing between a plugin's thread and the hub: HubCalls and TaskChannel.

Real threads (gevent's threadpool, as the worker uses it) and the recording
session of fakes.py: what is under test is that each delivery is settled
exactly once, in the hub, and only while its channel lives.
"""
import logging
import threading

import gevent
import pika
import pytest

from taskqueue.worker import HubCalls, TaskChannel

from fakes import RecordingSession


def in_thread(fn, timeout=5):
    """Run fn() in a real thread, as handle_task runs, while the hub goes on."""
    return gevent.get_hub().threadpool.spawn(fn).get(timeout=timeout)


@pytest.fixture
def session():
    return RecordingSession(require_mandatory=False)


@pytest.fixture
def channel(session):
    session.delivered.append(7)
    return TaskChannel(session, HubCalls(), 7)


# -- HubCalls ---------------------------------------------------------------------

def test_hub_calls_from_another_thread_run_in_the_hub_in_order():
    hub_calls, ran = HubCalls(), []
    hub_thread = threading.get_ident()

    def submit_many():
        for n in range(100):
            hub_calls.submit(lambda n=n: ran.append((n, threading.get_ident())))
    in_thread(submit_many)
    with gevent.Timeout(5):
        while len(ran) < 100:
            gevent.sleep(0.001)
    assert [n for n, _ in ran] == list(range(100))
    assert {thread for _, thread in ran} == {hub_thread}


def test_hub_calls_run_what_is_pending_first_when_submitted_from_the_hub():
    hub_calls, ran = HubCalls(), []
    # Queued by another thread and not run yet (the hub has not looked)
    hub_calls._calls.append(lambda: ran.append("queued"))
    hub_calls.submit(lambda: ran.append("now"))
    assert ran == ["queued", "now"]


def test_hub_calls_call_returns_the_result_or_raises_what_the_call_raised():
    hub_calls = HubCalls()
    assert in_thread(lambda: hub_calls.call(lambda: threading.get_ident(), 5)) == \
        threading.get_ident()

    def fails():
        raise KeyError("no such queue")
    with pytest.raises(KeyError, match="no such queue"):
        in_thread(lambda: hub_calls.call(fails, 5))


def test_hub_calls_log_a_failing_call_and_run_the_next_ones(caplog):
    hub_calls, ran = HubCalls(), []

    def submit():
        hub_calls.submit(lambda: 1 / 0)
        hub_calls.submit(lambda: ran.append("next"))
    in_thread(submit)
    with gevent.Timeout(5):
        while not ran:
            gevent.sleep(0.001)
    assert "call from a task thread failed" in caplog.text and "ZeroDivisionError" in caplog.text


# -- TaskChannel ------------------------------------------------------------------

def test_task_channel_settles_once_when_the_plugin_settles_twice(channel, session, caplog):
    channel.basic_ack(7)
    channel.basic_nack(7, requeue=True)
    channel.basic_ack()
    assert session.calls == [("ack", 7)]
    assert channel.settlement == "ack" and channel.outcome == "ack"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["basic_nack on delivery 7 ignored: already settled by basic_ack",
                        "basic_ack on delivery 7 ignored: already settled by basic_ack"]


def test_task_channel_refuses_a_delivery_tag_that_is_not_its_task(channel, session):
    with pytest.raises(ValueError, match="delivery tag 8 is not the task being handled"):
        channel.basic_ack(8)
    with pytest.raises(ValueError, match=r"basic_reject: delivery tag 6 .*\(tag 7\)"):
        channel.basic_reject(6)
    assert channel.settlement is None and session.calls == []
    channel.basic_reject(7, requeue=False)
    assert session.calls == [("reject", 7, False)] and channel.outcome == "reject"


def test_task_channel_sends_nothing_when_the_session_closed_before_the_settlement(
        channel, session, caplog):
    session.close("connection lost")
    channel.basic_nack(requeue=False)
    assert session.calls == []
    assert "delivery 7 not nacked: the connection is gone" in caplog.text
    assert channel.settlement == "nack"


def test_task_channel_reports_a_requeue_when_the_plugin_gives_the_task_back(channel, session):
    in_thread(lambda: channel.basic_nack(7, multiple=True))
    with gevent.Timeout(5):
        while not session.calls:
            gevent.sleep(0.001)
    assert session.calls == [("nack", 7, True)] and channel.outcome == "requeue"


def test_task_channel_publishes_through_the_hub_when_a_task_thread_publishes(channel, session):
    in_thread(lambda: channel.basic_publish("", "replies", "text"))
    assert session.calls == [("publish", "replies", b"text")]


# -- reply --------------------------------------------------------------------------

def task_header(**kwargs):
    return pika.BasicProperties(**kwargs)


def test_reply_goes_to_reply_to_with_the_tasks_correlation_id_on_the_reply_line(session):
    session.delivered.append(7)
    channel = TaskChannel(session, HubCalls(), 7, task_header(
        reply_to="amq.rabbitmq.reply-to.abc", correlation_id="c-1", message_id="m-1"))
    in_thread(lambda: channel.reply(b'{"ok":true}', content_type="application/json"))
    # Session.reply, never the task's channel: a crafted reply_to costs only the reply
    assert session.calls == [("reply", "amq.rabbitmq.reply-to.abc", b'{"ok":true}')]
    [(_, _, props)] = session.replies
    assert (props.correlation_id, props.content_type) == ("c-1", "application/json")
    assert channel.settlement is None       # a reply settles nothing: the plugin still acks


def test_reply_without_correlation_id_answers_with_the_message_id_and_text_as_utf8(session):
    session.delivered.append(7)
    channel = TaskChannel(session, HubCalls(), 7,
                          task_header(reply_to="amq.gen-abc", message_id="m-2"))
    in_thread(lambda: channel.reply("día"))
    [(_, body, props)] = session.replies
    assert body == "día".encode()
    assert (props.correlation_id, props.content_type) == ("m-2", "text/plain; charset=utf-8")


def test_reply_to_a_task_without_reply_to_sends_nothing_and_warns(session, caplog):
    session.delivered.append(7)
    channel = TaskChannel(session, HubCalls(), 7, task_header(message_id="m-3"))
    in_thread(lambda: channel.reply(b"answer"))
    assert session.calls == []
    assert "reply to delivery 7 not sent: the task has no reply_to" in caplog.text


# -- retry ------------------------------------------------------------------------------

def test_retry_settles_the_task_once_and_sends_nothing_itself(channel, session):
    channel.retry(2.5)
    channel.basic_ack()     # too late: already settled by retry
    assert (channel.settlement, channel.retry_delay, channel.outcome) == ("retry", 2.5, "retry")
    assert session.calls == [] and session.published == []   # the worker publishes, then acks


@pytest.mark.parametrize("delay", [-1, float("nan"), float("inf"), "5", True, 2**21])
def test_retry_refuses_a_delay_that_is_not_seconds_it_can_wait(channel, delay):
    with pytest.raises(ValueError, match="retry: delay .* is not a number of seconds from 0 to"):
        channel.retry(delay)
    assert channel.settlement is None
