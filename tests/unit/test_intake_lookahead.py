"""Intake, a worker's consumer of its two queues (priorities.py): the most urgent held
task first, lookahead, giving back what waits behind a long task, one task at a time
without holding another, and resuming. Driven with the recording session of fakes.py;
tests/integration/test_intake.py and test_priorities.py do the same against RabbitMQ.
"""
import gevent
import pika

from taskqueue.runtime.intake import AHEAD_PREFETCH, Inbox, Intake

from fakes import RecordingSession

HIGH, LOW = "worker_t+high", "worker_t"


def intake_of(prefetch=1, lookahead=0.1):
    session = RecordingSession()
    intake = Intake(session, (HIGH, LOW), prefetch, lookahead)
    return session, intake


def take(intake):
    method, _, _ = intake.inbox.get_nowait()
    return method.delivery_tag


def consumes(session):
    """The prefetch of each qos so far."""
    return [c[1] for c in session.calls if c[0] == "qos"]


def prio(n):
    return pika.BasicProperties(priority=n)


def test_intake_consumes_both_queues_taking_tasks_in_advance_when_prefetch_is_one():
    session, intake = intake_of()
    assert intake.start() == AHEAD_PREFETCH == 4
    # The high queue one at a time: a high task held by a busy worker is one a free one
    # cannot start
    assert session.calls == [("qos", 1), ("consume", HIGH, "ctag1"),
                             ("qos", 4), ("consume", LOW, "ctag2")]
    assert intake.holds_ahead


def test_the_inbox_gives_the_most_urgent_delivery_first_then_in_order_and_a_wake_up_before_all():
    inbox = Inbox()
    for tag, priority in [(1, None), (2, 0), (3, 9), (4, 5), (5, 9), (6, "x"), (7, 300)]:
        inbox.put((tag, prio(priority) if priority != "x" else object(), b""))
    inbox.put(None)
    assert inbox.get_nowait() is None
    assert [inbox.get_nowait()[0] for _ in range(7)] == [3, 5, 7, 4, 1, 2, 6]
    assert inbox.taken == 7


def test_a_high_task_held_behind_low_ones_is_taken_first():
    session, intake = intake_of()
    intake.start()
    for tag in (1, 2, 3):
        session.deliver(tag, consumer="ctag2", props=prio(0))
    session.deliver(4, consumer="ctag1", props=prio(7))
    assert [take(intake) for _ in range(4)] == [4, 1, 2, 3]


def test_intake_keeps_an_explicit_prefetch_on_each_consumer_and_never_gives_back():
    session, intake = intake_of(prefetch=5)
    assert intake.start() == 5 and intake.lookahead is None and not intake.holds_ahead
    session.deliver(1, consumer="ctag1")
    session.deliver(2, consumer="ctag2")
    intake.task_is_long()
    intake.task_done(100.0)
    assert session.calls == [("qos", 5), ("consume", HIGH, "ctag1"), ("consume", LOW, "ctag2")]


def test_intake_gives_back_what_both_consumers_hold_when_the_task_in_hand_is_long():
    # Given a low task in hand, another low one and a high one delivered in advance
    session, intake = intake_of()
    intake.start()
    session.deliver(1, consumer="ctag2")
    assert take(intake) == 1
    session.deliver(2, consumer="ctag2")
    session.deliver(3, consumer="ctag1", props=prio(9))
    # When the task in hand passes lookahead
    intake.task_is_long()
    # Then both consumers are cancelled and what they brought goes back, the high one first
    assert session.calls[-4:] == [("cancel", "ctag1"), ("cancel", "ctag2"),
                                  ("nack", 3, True), ("nack", 2, True)]
    assert intake.inbox.qsize() == 0 and not intake.holds_ahead
    intake.task_is_long()   # said twice: nothing more to give back
    assert session.calls[-1] == ("nack", 2, True)


def test_after_a_long_task_intake_takes_one_at_a_time_high_queue_first_then_ahead_once_short():
    session, intake = intake_of()
    intake.start()
    session.deliver(1, consumer="ctag2")
    take(intake)
    intake.task_is_long()
    # After the long task: one task, by basic.get, from the high queue first; no consumer
    session.ready = {HIGH: [(2, prio(9))], LOW: [3, 4]}
    intake.task_done(5.0)
    assert session.calls[-1] == ("get", HIGH) and take(intake) == 2
    assert not intake.holds_ahead and not session.consumers
    # A long one again: still one at a time; the high queue is empty now
    intake.task_done(5.0)
    assert session.calls[-2:] == [("get", HIGH), ("get", LOW)] and take(intake) == 3
    assert intake.inbox.qsize() == 0 and not session.consumers
    # A short one: the next tasks in advance again, from both queues
    intake.task_done(0.01)
    assert session.calls[-4:] == [("qos", 1), ("consume", HIGH, "ctag3"),
                                  ("qos", 4), ("consume", LOW, "ctag4")]
    assert intake.holds_ahead
    assert consumes(session) == [1, 4, 1, 4]


def test_one_at_a_time_with_both_queues_empty_waits_on_both_and_keeps_only_the_first():
    # Given lookahead off (one task at a time) and nothing ready
    session, intake = intake_of(lookahead=0)
    assert intake.start() == 1
    assert session.calls == [("get", HIGH), ("get", LOW), ("qos", 1),
                             ("consume", HIGH, "ctag1"), ("consume", LOW, "ctag2")]
    # When a task comes to each queue in the same moment
    session.deliver(1, consumer="ctag2", props=prio(0))
    session.deliver(2, consumer="ctag1", props=prio(8))
    gevent.sleep(0)     # the greenlet that ends the wait
    intake._end_waiting()
    # Then both consumers stop; the high one is kept, the low one goes back at once
    assert session.of("cancel") == [("cancel", "ctag1"), ("cancel", "ctag2")]
    assert session.of("nack") == [("nack", 1, True)]
    assert take(intake) == 2 and intake.inbox.qsize() == 0 and not session.consumers


def test_one_at_a_time_never_holds_a_task_of_the_other_queue_behind_the_one_in_hand():
    # The bounce a low task would suffer: held beside each high task, given back each time.
    session, intake = intake_of(lookahead=0)
    session.ready = {HIGH: [(1, prio(9)), (2, prio(9))], LOW: [3]}
    intake.start()
    assert take(intake) == 1
    intake.task_done(30.0)
    assert take(intake) == 2
    intake.task_done(30.0)
    assert take(intake) == 3
    assert session.of("nack") == [] and session.of("consume") == []


def test_a_task_taken_while_waiting_ends_the_wait_before_the_next_is_taken():
    session, intake = intake_of(lookahead=0)
    intake.start()
    session.deliver(1, consumer="ctag1")
    assert take(intake) == 1
    session.ready = {LOW: [2]}
    intake.task_done(1.0)   # waits for the consumers to be cancelled, then gets
    assert session.of("cancel") == [("cancel", "ctag1"), ("cancel", "ctag2")]
    assert take(intake) == 2 and session.of("nack") == []


def test_after_a_high_task_the_high_queue_is_asked_before_a_held_low_one_is_taken():
    # Given a worker taking tasks in advance, holding a high task and two low ones
    session, intake = intake_of()
    intake.start()
    session.deliver(1, consumer="ctag2", props=prio(0))
    session.deliver(2, consumer="ctag2", props=prio(0))
    session.deliver(3, consumer="ctag1", props=prio(9))
    assert take(intake) == 3
    # When the next high one waits in the broker, not yet delivered
    session.ready = {HIGH: [(4, prio(6))]}
    # Then it is taken before the low ones; the high queue asked again, empty: a low one
    assert take(intake) == 4 and session.calls[-1] == ("get", HIGH)
    assert take(intake) == 1 and session.calls[-1] == ("get", HIGH)
    # and not asked after a low one
    assert take(intake) == 2 and session.calls[-1] == ("get", HIGH)
    assert len(session.of("get")) == 2


def test_intake_keeps_a_wake_up_when_it_gives_tasks_back():
    session, intake = intake_of()
    intake.start()
    session.deliver(1)
    take(intake)
    session.deliver(2)
    intake.wake()           # a stop request arrived
    intake.task_is_long()
    assert session.of("nack") == [("nack", 2, True)]
    assert intake.inbox.get_nowait() is None


def test_intake_gives_nothing_back_when_the_session_is_gone():
    session, intake = intake_of()
    intake.start()
    session.deliver(1)
    take(intake)
    session.deliver(2)
    session.close("connection lost")
    intake.task_is_long()       # the broker requeues everything anyway
    intake.task_done(0.01)
    assert session.of("nack") == [] and session.of("cancel") == []
