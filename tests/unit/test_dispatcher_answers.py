"""The dispatcher's failure replies (docs/02 "Failure replies"): a task it dead-letters
answers its caller once the dead letter is confirmed, never when the input goes back to
taskqueue; the reply goes on the session's reply connection (Session.reply), not on the
confirm channel: it takes no sequence number, no ledger entry, and a reply_to the broker
chokes on costs no input in flight. Driven callback by callback with the recording
session of fakes.py, as test_dispatcher_pipeline."""
import json
from types import SimpleNamespace

import pika
import pytest

from taskqueue.runtime.dispatcher import Dispatcher

from fakes import RecordingSession

DIRECT = "amq.rabbitmq.reply-to.g1h2AA5yZXBseUAx"
FAILED = "x-taskqueue-failed"


def at_once(delay, fn):
    fn()


def deliver(dispatcher, tag, body, **props):
    dispatcher._session.delivered.append(tag)
    dispatcher._on_message(SimpleNamespace(delivery_tag=tag), pika.BasicProperties(**props), body)


def confirm(dispatcher, seq, multiple=False, ack=True):
    method = pika.spec.Basic.Ack(seq, multiple) if ack else pika.spec.Basic.Nack(seq, multiple)
    dispatcher._on_confirm(SimpleNamespace(method=method))


def envelope(n, worker_type="t"):
    return json.dumps({"worker_type": worker_type, "workitem": n}).encode()


def answers(session):
    """The failure replies, as the reply connection got them."""
    assert not any(FAILED in (props.headers or {}) for _, _, props in session.sent), \
        "a failure reply on the confirm channel"
    return [(queue, props.correlation_id, props.headers[FAILED], body)
            for queue, body, props in session.replies]


def test_a_dead_lettered_task_answers_once_its_dead_letter_is_confirmed_on_the_reply_line():
    session = RecordingSession()
    dispatcher = Dispatcher(session, prefetch=100, schedule=at_once)
    deliver(dispatcher, 1, b"nospace", reply_to=DIRECT, correlation_id="c-1")  # seq 1: dead
    deliver(dispatcher, 2, envelope(2))                                         # seq 2
    assert answers(session) == []        # the dead letter may yet be refused
    confirm(dispatcher, 1)
    [(queue, correlation, reason, body)] = answers(session)
    assert (queue, correlation) == (DIRECT, "c-1")
    assert reason.startswith("not routed: plain-text body 'nospace' has no space")
    assert body == reason.encode()
    # after the ack of its input, in the same turn
    assert [c[0] for c in session.calls[-2:]] == ["ack", "reply"]
    assert session.of("ack") == [("ack", 1)]
    # The reply took no sequence number: the next publish is 3, and the ledger holds
    # only the copy of input 2
    assert dispatcher.unconfirmed == 1
    deliver(dispatcher, 3, envelope(3))                                         # seq 3
    confirm(dispatcher, 3)
    assert session.of("ack") == [("ack", 1), ("ack", 3)]
    confirm(dispatcher, 2)
    assert sorted(t for _, t in session.of("ack")) == [1, 2, 3]
    assert session.of("nack") == [] and dispatcher.unconfirmed == 0
    assert dispatcher.drained.is_set()


def test_a_multiple_confirm_acks_the_inputs_and_answers_each_dead_letter_it_covers():
    session = RecordingSession()
    dispatcher = Dispatcher(session, prefetch=100, schedule=at_once)
    deliver(dispatcher, 1, b"{not json", reply_to="amq.gen-abc")                # seq 1
    confirm(dispatcher, 1)
    deliver(dispatcher, 2, envelope(2))                                         # seq 2
    deliver(dispatcher, 3, b"{bad", reply_to="amq.gen-abc", message_id="m-3")   # seq 3
    confirm(dispatcher, 3, multiple=True)
    assert sorted(t for _, t in session.of("ack")) == [1, 2, 3]
    assert [(q, c) for q, c, _, _ in answers(session)] == [("amq.gen-abc", None),
                                                           ("amq.gen-abc", "m-3")]
    assert dispatcher.unconfirmed == 0 and dispatcher.drained.is_set()


def test_a_nacked_dead_letter_gives_the_input_back_without_an_answer_and_answers_next_time():
    session = RecordingSession()
    dispatcher = Dispatcher(session, prefetch=100, schedule=at_once)
    deliver(dispatcher, 1, b"nospace", reply_to=DIRECT)
    confirm(dispatcher, 1, ack=False)
    assert session.of("nack") == [("nack", 1, True)] and answers(session) == []
    deliver(dispatcher, 2, b"nospace", reply_to=DIRECT)    # it comes again
    confirm(dispatcher, 2)
    assert len(answers(session)) == 1


def test_a_returned_copy_of_a_routable_task_goes_back_to_taskqueue_and_answers_nothing():
    session = RecordingSession()
    dispatcher = Dispatcher(session, prefetch=100, schedule=at_once)
    deliver(dispatcher, 1, envelope(1), reply_to=DIRECT)
    dispatcher._on_return("worker_t", pika.BasicProperties(reply_to=DIRECT), b"1")
    confirm(dispatcher, 1)
    assert session.of("nack") == [("nack", 1, True)]
    assert answers(session) == []


def test_the_tasks_of_a_queue_the_broker_refuses_answer_with_the_refusal():
    session = RecordingSession(refuse={"worker_t"})
    dispatcher = Dispatcher(session, prefetch=100, schedule=at_once)
    deliver(dispatcher, 1, envelope(1), reply_to=DIRECT, correlation_id="c-1")
    confirm(dispatcher, 1)
    assert answers(session) == [(DIRECT, "c-1", "not routed: queue 'worker_t' refused",
                                 b"not routed: queue 'worker_t' refused")]


def test_a_refused_message_answers_with_the_refusal():
    session = RecordingSession()
    dispatcher = Dispatcher(session, prefetch=100, schedule=at_once, max_body_size=100)
    deliver(dispatcher, 1, envelope(1), reply_to=DIRECT, headers={"x-taskqueue-retries": "3"})
    deliver(dispatcher, 2, b"t " + b"x" * 200, reply_to=DIRECT)
    confirm(dispatcher, 2, multiple=True)
    [first, second] = [reason for _, _, reason, _ in answers(session)]
    assert [q for q, _, _ in session.sent[:2]] == ["taskqueue_dead"] * 2
    assert first.startswith("not routed: header x-taskqueue-retries is '3'")
    assert second.startswith("not routed: body is 202 bytes, more than [amqp] max_body_size")


@pytest.mark.parametrize("reply_to", [
    None, "", "taskqueue", "taskqueue_dead", "worker_t", "results",   # a group's option is not
    "amq.gen", "amq.rabbitmq.reply", "amq.direct",                    # the dispatcher's to read
    b"amq.gen-\xff",                  # a short string that was not UTF-8: pika leaves it bytes
])
def test_no_answer_to_a_queue_that_is_no_reply_queue(reply_to):
    session = RecordingSession()
    dispatcher = Dispatcher(session, prefetch=100, schedule=at_once)
    deliver(dispatcher, 1, b"nospace", reply_to=reply_to)
    confirm(dispatcher, 1)
    assert [q for q, _, _ in session.sent] == ["taskqueue_dead"] and session.replies == []
    assert dispatcher.unconfirmed == 0


def test_a_long_reason_is_cut_and_a_password_in_it_hidden():
    session = RecordingSession()
    dispatcher = Dispatcher(session, prefetch=100, schedule=at_once)
    deliver(dispatcher, 1, b"amqp://app:s3cret@db/" + b"x" * 3000, reply_to=DIRECT)
    confirm(dispatcher, 1)
    [(_, _, reason, body)] = answers(session)
    assert len(reason) <= 1000 and "s3cret" not in reason and b"s3cret" not in body


def test_an_input_the_dispatcher_fails_on_is_rejected_and_answered_at_once():
    session = RecordingSession()
    dispatcher = Dispatcher(session, prefetch=100, schedule=at_once)
    # Properties that are not what pika gives, with a reply_to: routing fails
    props = SimpleNamespace(reply_to=DIRECT, correlation_id="c-1", message_id=None)
    session.delivered.append(1)
    dispatcher._on_message(SimpleNamespace(delivery_tag=1), props, b"x")
    assert session.of("reject") == [("reject", 1, False)]
    [(queue, correlation, reason, _)] = answers(session)
    assert (queue, correlation) == (DIRECT, "c-1")
    assert reason.startswith("not routed: the dispatcher failed on it: AttributeError")
    deliver(dispatcher, 2, envelope(2))     # seq 1: the reply took none
    confirm(dispatcher, 1)
    assert session.of("ack") == [("ack", 2)]
