"""The dispatcher's confirm pipeline, driven callback by callback.

The session here is the recording stand-in of fakes.py: the logic under test is which
publishes and acks the Dispatcher issues, and when, not the broker I/O
(tests/integration/test_dispatcher.py covers that against RabbitMQ).
"""
import json
import logging
from types import SimpleNamespace

import pika

from taskqueue.runtime.dispatcher import Dispatcher

from fakes import RecordingSession


def at_once(delay, fn):
    """The dispatcher's retry timer, fired at once."""
    fn()


def deliver(dispatcher, tag, body):
    dispatcher._session.delivered.append(tag)
    dispatcher._on_message(SimpleNamespace(delivery_tag=tag), pika.BasicProperties(), body)


def confirm(dispatcher, seq, multiple=False, ack=True):
    method = pika.spec.Basic.Ack(seq, multiple) if ack else pika.spec.Basic.Nack(seq, multiple)
    dispatcher._on_confirm(SimpleNamespace(method=method))


def envelope(n):
    return json.dumps({"worker_type": "t", "workitem": n}).encode()


def test_dispatcher_publishes_many_before_any_confirm_and_acks_only_after_confirms():
    session = RecordingSession()
    dispatcher = Dispatcher(session, prefetch=100, schedule=at_once)
    for tag in range(1, 11):
        deliver(dispatcher, tag, envelope(tag))
    assert len(session.of("publish")) == 10
    assert session.of("ack") == []
    assert dispatcher.unconfirmed == 10
    confirm(dispatcher, 4, multiple=True)
    assert session.of("ack") == [("ack", t) for t in range(1, 5)]
    confirm(dispatcher, 7)
    assert session.of("ack")[-1] == ("ack", 7)
    confirm(dispatcher, 10, multiple=True)
    assert sorted(t for _, t in session.of("ack")) == list(range(1, 11))
    assert dispatcher.unconfirmed == 0 and dispatcher.drained.is_set()


def test_dispatcher_declares_each_worker_queue_once():
    session = RecordingSession()
    dispatcher = Dispatcher(session, prefetch=100, schedule=at_once)
    for tag in range(1, 4):
        deliver(dispatcher, tag, envelope(tag))
    assert session.of("declare") == [("declare", "worker_t")]


def test_dispatcher_binds_each_worker_queue_it_declared_to_the_one_hop_exchange_once():
    session = RecordingSession(refuse={"worker_u"})
    dispatcher = Dispatcher(session, prefetch=100, schedule=at_once, spawn=lambda fn, *a: fn(*a))
    for tag in range(1, 4):
        deliver(dispatcher, tag, envelope(tag))
    deliver(dispatcher, 4, json.dumps({"worker_type": "u", "workitem": 1}).encode())
    deliver(dispatcher, 5, b"{not json")    # taskqueue_dead is no worker queue: never bound
    # worker_t, declared, is bound by its type; worker_u, refused, is not
    assert session.of("onehop") == [("onehop", False, (("worker_t", "t"),))]


def test_dispatcher_requeues_the_input_of_a_nacked_publish_instead_of_acking_it():
    session = RecordingSession()
    dispatcher = Dispatcher(session, prefetch=100, schedule=at_once)
    deliver(dispatcher, 1, envelope(1))
    deliver(dispatcher, 2, envelope(2))
    confirm(dispatcher, 1, ack=False)
    confirm(dispatcher, 2)
    assert session.of("nack") == [("nack", 1, True)]
    assert session.of("ack") == [("ack", 2)]


def test_dispatcher_logs_a_run_of_nacked_publishes_once_and_their_count_when_acks_return(caplog):
    # A quorum queue without a leader (its node went away) nacks every publish for
    # seconds: one line for the event, not one per message (a cluster run wrote 1 344).
    session = RecordingSession()
    dispatcher = Dispatcher(session, prefetch=100, schedule=at_once)
    caplog.set_level(logging.INFO, logger="taskqueue.runtime.dispatcher")
    for tag in range(1, 7):
        deliver(dispatcher, tag, envelope(tag))
    for seq in range(1, 5):
        confirm(dispatcher, seq, ack=False)
    confirm(dispatcher, 5, ack=False)
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "nacks routed messages" in caplog.records[0].getMessage()
    confirm(dispatcher, 6)
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]
    assert "again: 5 nacked" in caplog.records[1].getMessage()
    assert session.of("nack") == [("nack", t, True) for t in range(1, 6)]
    # The next episode is told again.
    deliver(dispatcher, 7, envelope(7))
    confirm(dispatcher, 7, ack=False)
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO", "WARNING"]


def test_dispatcher_publishes_unroutable_input_to_the_dead_letter_queue_before_acking_it():
    session = RecordingSession()
    dispatcher = Dispatcher(session, prefetch=100, schedule=at_once)
    deliver(dispatcher, 1, b"{not json")
    assert session.of("publish") == [("publish", "taskqueue_dead", b"{not json")]
    assert session.of("ack") == []
    confirm(dispatcher, 1)
    assert session.of("ack") == [("ack", 1)]


def test_dispatcher_holds_messages_of_a_new_type_until_its_queue_is_declared():
    session = RecordingSession(answer_declares=False)
    dispatcher = Dispatcher(session, prefetch=100, schedule=at_once)
    deliver(dispatcher, 1, envelope(1))
    deliver(dispatcher, 2, envelope(2))
    assert session.of("declare") == [("declare", "worker_t")]  # once, not per message
    assert session.of("publish") == []
    queue, on_done = session.unanswered.pop()
    on_done(None)
    assert [c[1] for c in session.of("publish")] == ["worker_t", "worker_t"]
    deliver(dispatcher, 3, envelope(3))
    assert len(session.of("publish")) == 3 and len(session.of("declare")) == 1


def test_dispatcher_dead_letters_the_tasks_of_a_queue_the_broker_refuses_and_routes_others():
    session = RecordingSession(refuse={"worker_t"})
    dispatcher = Dispatcher(session, prefetch=100, schedule=at_once)
    deliver(dispatcher, 1, envelope(1))
    deliver(dispatcher, 2, json.dumps({"worker_type": "u", "workitem": 1}).encode())
    deliver(dispatcher, 3, envelope(3))  # within the retry window: no new declare
    assert [c[1] for c in session.of("publish")] == ["taskqueue_dead", "worker_u", "taskqueue_dead"]
    assert session.of("declare") == [("declare", "worker_t"), ("declare", "worker_u")]
    for seq in (1, 2, 3):
        confirm(dispatcher, seq)
    assert sorted(t for _, t in session.of("ack")) == [1, 2, 3]


def test_dispatcher_requeues_the_input_of_a_returned_publish_and_declares_the_queue_again():
    session = RecordingSession()
    dispatcher = Dispatcher(session, prefetch=100, schedule=at_once)
    deliver(dispatcher, 1, envelope(1))
    deliver(dispatcher, 2, envelope(2))
    # The queue was deleted under us: the first copy comes back (the workitem 1 is b"1").
    dispatcher._on_return("worker_t", pika.BasicProperties(), b"1")
    confirm(dispatcher, 2, multiple=True)  # RabbitMQ acks returned messages too
    assert session.of("nack") == [("nack", 1, True)]
    assert session.of("ack") == [("ack", 2)]
    deliver(dispatcher, 3, envelope(3))
    assert session.of("declare") == [("declare", "worker_t")] * 2


def test_dispatcher_attributes_a_return_to_the_very_message_returned():
    session = RecordingSession()
    dispatcher = Dispatcher(session, prefetch=100, schedule=at_once)
    for tag in (1, 2, 3):
        deliver(dispatcher, tag, envelope(tag))
    dispatcher._on_return("worker_t", pika.BasicProperties(), b"3")  # the newest, not the oldest
    confirm(dispatcher, 3, multiple=True)
    assert session.of("nack") == [("nack", 3, True)]
    assert sorted(t for _, t in session.of("ack")) == [1, 2]


def test_dispatcher_acks_a_confirmed_batch_at_once_but_never_over_an_input_waiting_to_go_back():
    session = RecordingSession()
    later = []
    dispatcher = Dispatcher(session, prefetch=100, schedule=lambda delay, fn: later.append(fn))
    for tag in range(1, 7):
        deliver(dispatcher, tag, envelope(tag))
    # Copy 3 comes back: its input must wait (unsettled) for its retry timer.
    dispatcher._on_return("worker_t", pika.BasicProperties(), b"3")
    confirm(dispatcher, 5, multiple=True)
    assert session.of("ack") == [("ack", 1), ("ack", 2), ("ack", 4), ("ack", 5)]
    assert session.of("nack") == []
    later.pop()()   # the retry timer fires
    assert session.of("nack") == [("nack", 3, True)]
    confirm(dispatcher, 6)
    assert session.of("ack")[-1] == ("ack", 6)
    # One multiple ack for 1-2; 4, 5 and 6 one by one (3 was still waiting below them).
    assert session.ack_frames == [(2, True), (4, False), (5, False), (6, False)]


def test_dispatcher_rejects_to_the_dead_letter_queue_what_it_cannot_handle_instead_of_crashing():
    session = RecordingSession()
    dispatcher = Dispatcher(session, prefetch=100, schedule=at_once)
    # Properties that are not what pika gives (any unexpected failure will do)
    dispatcher._on_message(SimpleNamespace(delivery_tag=1), object(), b"x")
    assert session.of("reject") == [("reject", 1, False)]


def test_dispatcher_acks_later_inputs_in_one_batch_when_an_earlier_one_could_not_be_routed():
    """Issue 10, bug 4: the rejected input left the ack floor stuck below every later one."""
    session = RecordingSession()
    dispatcher = Dispatcher(session, prefetch=100, schedule=at_once)
    session.delivered.append(1)
    dispatcher._on_message(SimpleNamespace(delivery_tag=1), object(), b"x")  # routing fails
    for tag in range(2, 12):
        deliver(dispatcher, tag, envelope(tag))
    confirm(dispatcher, 10, multiple=True)
    assert session.of("reject") == [("reject", 1, False)]
    assert session.ack_frames == [(11, True)]   # one multiple ack, not ten single ones


def test_dispatcher_routes_by_the_format_plugins_it_was_given_and_dead_letters_a_broken_ones():
    from taskqueue.runtime.formats import Format
    readers = {"application/x-good": Format("application/x-good", "good:read",
                                            read=lambda body: ("g", body.upper())),
               "application/x-bad": Format("application/x-bad", "bad:read", problem="bad: no")}
    session = RecordingSession()
    dispatcher = Dispatcher(session, prefetch=100, schedule=at_once, readers=readers)
    for tag, content_type, body in [(1, "application/x-good", b"abc"), (2, "application/x-bad", b"x"),
                                    (3, None, b"t plain")]:
        session.delivered.append(tag)
        dispatcher._on_message(SimpleNamespace(delivery_tag=tag),
                               pika.BasicProperties(content_type=content_type), body)
    assert session.of("publish") == [("publish", "worker_g", b"ABC"),
                                     ("publish", "taskqueue_dead", b"x"),
                                     ("publish", "worker_t", b"plain")]


def test_dispatcher_drops_the_deaths_of_the_delay_chain_from_a_delayed_task_and_keeps_the_rest():
    session = RecordingSession()
    dispatcher = Dispatcher(session, prefetch=100, schedule=at_once)
    chain = [{"queue": f"taskqueue.delay.{level}", "reason": "expired", "count": 1,
              "exchange": f"taskqueue.delay.x{level}", "routing-keys": ["0.1.1"]} for level in (0, 1)]
    headers = {"worker_type": "t", "x-taskqueue-delayed-until": 1700000000, "mine": "kept",
               "x-death": chain, "x-first-death-queue": "taskqueue.delay.1",
               "x-first-death-reason": "expired", "x-first-death-exchange": "taskqueue.delay.x1",
               "x-last-death-queue": "taskqueue.delay.0", "x-last-death-reason": "expired",
               "x-last-death-exchange": "taskqueue.delay.x0"}
    session.delivered.append(1)
    dispatcher._on_message(SimpleNamespace(delivery_tag=1),
                           pika.BasicProperties(headers=headers, message_id="m"), b"\x00binary")
    [(queue, body, props)] = session.sent
    assert (queue, body) == ("worker_t", b"\x00binary")
    assert props.headers == {"worker_type": "t", "x-taskqueue-delayed-until": 1700000000,
                             "mine": "kept"}
    assert props.message_id == "m"


def test_a_message_whose_headers_were_not_decoded_is_dead_lettered_and_the_next_routed():
    from taskqueue.broker.fielddecode import UndecodedTable
    session = RecordingSession()
    dispatcher = Dispatcher(session, prefetch=100, schedule=at_once, max_body_size=100)
    session.delivered.extend([1, 2, 3, 4])
    undecoded = pika.BasicProperties(headers=UndecodedTable("too deep", b"raw"), priority=200)
    dispatcher._on_message(SimpleNamespace(delivery_tag=1), undecoded, envelope(1))
    dispatcher._on_message(SimpleNamespace(delivery_tag=2), pika.BasicProperties(), b"x" * 101)
    dispatcher._on_message(SimpleNamespace(delivery_tag=3), pika.BasicProperties(
        headers={"x-taskqueue-retries": "3"}), envelope(3))
    dispatcher._on_message(SimpleNamespace(delivery_tag=4), pika.BasicProperties(
        priority=200, headers={"x-taskqueue-exit": "forged", "x-taskqueue-retries": 1}),
        envelope(4))
    assert [queue for queue, _, _ in session.sent] == ["taskqueue_dead"] * 3 + ["worker_t"]
    dead = session.published_props
    assert dead[0].headers["x-taskqueue-reason"] == "headers not decoded: too deep"
    assert dead[0].headers["x-taskqueue-raw-headers"] == b"raw"
    assert dead[1].headers["x-taskqueue-reason"].startswith("body is 101 bytes, more than")
    assert dead[2].headers["x-taskqueue-reason"].startswith("header x-taskqueue-retries is '3'")
    assert dead[3].priority == 9 and dead[3].headers == {"x-taskqueue-retries": 1}
    confirm(dispatcher, 4, multiple=True)
    assert sorted(t for _, t in session.of("ack")) == [1, 2, 3, 4]


def deliver_with_priority(dispatcher, tag, priority, worker_type="t"):
    dispatcher._session.delivered.append(tag)
    dispatcher._on_message(SimpleNamespace(delivery_tag=tag), pika.BasicProperties(
        priority=priority), json.dumps({"worker_type": worker_type, "workitem": tag}).encode())


def test_dispatcher_routes_a_task_of_high_priority_to_the_high_queue_when_it_exists():
    session = RecordingSession(existing={"worker_t+high"})
    dispatcher = Dispatcher(session, prefetch=100, schedule=at_once)
    for tag, priority in [(1, 9), (2, 4), (3, 5), (4, None), (5, 200)]:
        deliver_with_priority(dispatcher, tag, priority)
    assert [(queue, props.priority) for queue, _, props in session.sent] == [
        ("worker_t+high", 9), ("worker_t", 4), ("worker_t+high", 5), ("worker_t", None),
        ("worker_t+high", 9)]
    # Looked for once, never declared (a pool of an older version would not consume it)
    assert session.of("exists") == [("exists", "worker_t+high")]
    assert session.of("declare") == [("declare", "worker_t")]


def test_dispatcher_routes_a_task_of_high_priority_to_worker_type_while_no_high_queue_exists(
        monkeypatch):
    from taskqueue.runtime import dispatcher as module
    now = [1000.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: now[0])
    session = RecordingSession()
    dispatcher = Dispatcher(session, prefetch=100, schedule=at_once)
    deliver_with_priority(dispatcher, 1, 9)
    deliver_with_priority(dispatcher, 2, 7)
    assert [(queue, props.priority) for queue, _, props in session.sent] == [
        ("worker_t", 9), ("worker_t", 7)]   # the priority kept, for a broker that orders by it
    assert session.of("exists") == [("exists", "worker_t+high")]
    # Looked for again once ABSENT_SECONDS passed: a worker of this version has declared it
    now[0] += module.ABSENT_SECONDS
    session.existing.add("worker_t+high")
    deliver_with_priority(dispatcher, 3, 9)
    assert session.sent[-1][0] == "worker_t+high" and len(session.of("exists")) == 2


def test_dispatcher_looks_for_a_high_queue_again_after_a_publish_to_it_came_back():
    session = RecordingSession(existing={"worker_t+high"})
    dispatcher = Dispatcher(session, prefetch=100, schedule=at_once)
    deliver_with_priority(dispatcher, 1, 9)
    queue, body, props = session.sent[0]
    dispatcher._on_return(queue, props, body)     # deleted under us
    confirm(dispatcher, 1)
    assert session.of("nack") == [("nack", 1, True)]    # its input goes back to taskqueue
    session.existing.clear()
    deliver_with_priority(dispatcher, 2, 9)
    assert session.sent[-1][0] == "worker_t" and len(session.of("exists")) == 2
