"""Failure replies (replies.py, docs/02 "Failure replies"): the wire form, read and
written; TaskFailed; and the worker's _answer_failure, which sends one to a task's
reply_to only when a reply may go there, with the recording session of fakes.py."""
from types import SimpleNamespace

import pika
import pytest
from hypothesis import given, strategies as st

from taskqueue import client, redact
from taskqueue.errors import TaskFailed, TaskqueueError
from taskqueue.protocol import replies
from taskqueue.worker import HubCalls, TaskChannel, _answer_failure

from fakes import RecordingSession

GROUP = SimpleNamespace(reply_queues=("results",))
DIRECT = "amq.rabbitmq.reply-to.g1h2AA5yZXBseUAx"


@given(st.text(min_size=1, max_size=replies.MAX_REASON))
def test_a_reason_is_read_back_from_the_headers_and_is_the_body_too(reason):
    body, headers = replies.failure(reason)
    expected = redact.redact(reason)
    if len(expected) > replies.MAX_REASON:
        expected = expected[:replies.MAX_REASON - 3] + "..."
    assert replies.failure_reason(headers) == expected
    assert body == expected.encode("utf-8", "backslashreplace")


def test_a_reason_quoting_a_broker_url_goes_out_without_its_password():
    body, headers = replies.failure("raised ConnectionError: amqp://app:s3cret@db:5672/ down")
    assert headers[replies.FAILED_HEADER] == (
        "raised ConnectionError: amqp://app:***@db:5672/ down")
    assert b"s3cret" not in body


def test_a_long_reason_is_cut_and_says_so():
    body, headers = replies.failure("x" * 5000)
    assert len(headers[replies.FAILED_HEADER]) == replies.MAX_REASON
    assert headers[replies.FAILED_HEADER].endswith("...") and body.endswith(b"...")


@pytest.mark.parametrize("headers, reason", [
    (None, None), ({}, None), ({"other": "x"}, None), ("not a table", None),
    ({replies.FAILED_HEADER: b"raised \xc3\xa9"}, "raised \u00e9"),
    ({replies.FAILED_HEADER: ""}, "no reason given"),
    ({replies.FAILED_HEADER: 7}, "no reason given"),
])
def test_only_a_reply_with_the_header_is_a_failure(headers, reason):
    assert replies.failure_reason(headers) == reason


def test_task_failed_names_the_task_and_the_reason_and_is_exported_by_the_client():
    exc = TaskFailed("c-1", "raised ValueError: boom", "resize")
    assert isinstance(exc, TaskqueueError)
    assert (exc.task_id, exc.reason) == ("c-1", "raised ValueError: boom")
    assert str(exc) == "resize task c-1 failed: raised ValueError: boom"
    assert "TaskFailed" in client.__all__ and client.TaskFailed is TaskFailed


def task(**props):
    return pika.BasicProperties(message_id="m-1", **props)


def test_a_failure_reply_goes_to_the_reply_to_with_the_correlation_id_and_the_header():
    session = RecordingSession(require_mandatory=False)
    assert _answer_failure(session, GROUP, "m-1", task(reply_to=DIRECT, correlation_id="c-1"),
                           "raised", "raised ValueError: boom") == "raised"
    assert session.sent == []       # on the reply line (Session.reply), not the channel
    [(queue, body, props)] = session.replies
    assert (queue, body) == (DIRECT, b"raised ValueError: boom")
    assert props.correlation_id == "c-1"
    assert props.content_type == "text/plain; charset=utf-8"
    assert props.headers == {"x-taskqueue-failed": "raised ValueError: boom"}


def test_without_a_correlation_id_the_message_id_is_used_as_channel_reply_does():
    session = RecordingSession(require_mandatory=False)
    _answer_failure(session, GROUP, "m-1", task(reply_to="results"), "dead", "refused: x")
    assert [(q, p.correlation_id) for q, _, p in session.replies] == [("results", "m-1")]


@pytest.mark.parametrize("outcome, props, open_", [
    ("requeue", task(reply_to=DIRECT), True),           # it comes again: not over
    ("raised", task(), True),                           # nobody waits
    ("raised", task(reply_to="taskqueue"), True),       # no reply queue: never written into
    ("raised", task(reply_to="elsewhere"), True),
    ("raised", task(reply_to=DIRECT), False),           # the connection is gone
])
def test_no_failure_reply_when_none_may_or_can_go(outcome, props, open_):
    session = RecordingSession(require_mandatory=False)
    session.is_open = open_
    assert _answer_failure(session, GROUP, "m-1", props, outcome, "why") == outcome
    assert session.sent == [] and session.replies == []


def test_the_channel_remembers_that_the_plugin_replied():
    session = RecordingSession(require_mandatory=False)
    channel = TaskChannel(session, HubCalls(), 7, task(reply_to=DIRECT), ())
    assert channel.replied is False
    channel.reply("done")
    assert channel.replied is True and len(session.replies) == 1
