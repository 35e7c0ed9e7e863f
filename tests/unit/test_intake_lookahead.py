"""Intake, a worker's consumer: lookahead, giving back what waits behind a long task,
and resuming. Driven with the recording session of fakes.py; tests/integration/
test_intake.py does the same against RabbitMQ.
"""
from taskqueue.runtime.intake import AHEAD_PREFETCH, Intake

from fakes import RecordingSession

QUEUE = "worker_t"


def intake_of(prefetch=1, lookahead=0.1):
    session = RecordingSession()
    intake = Intake(session, QUEUE, prefetch, lookahead)
    return session, intake


def take(intake):
    method, _, _ = intake.inbox.get_nowait()
    return method.delivery_tag


def consumes(session):
    """The (qos, consume) pairs since the last look, as prefetch values."""
    return [c[1] for c in session.calls if c[0] == "qos"]


def test_intake_takes_the_next_task_in_advance_when_prefetch_is_one_with_lookahead():
    session, intake = intake_of()
    assert intake.start() == AHEAD_PREFETCH == 4
    assert session.calls == [("qos", 4), ("consume", QUEUE, "ctag1")]
    assert intake.holds_ahead


def test_intake_keeps_an_explicit_prefetch_and_never_gives_back():
    session, intake = intake_of(prefetch=5)
    assert intake.start() == 5 and intake.lookahead is None and not intake.holds_ahead
    session.deliver(1)
    session.deliver(2)
    intake.task_is_long()
    intake.task_done(100.0)
    assert session.calls == [("qos", 5), ("consume", QUEUE, "ctag1")]


def test_intake_gives_back_what_it_holds_in_advance_when_the_task_in_hand_is_long():
    # Given a task in hand and the next one delivered in advance
    session, intake = intake_of()
    intake.start()
    session.deliver(1)
    session.deliver(2)
    assert take(intake) == 1
    # When the task in hand passes lookahead
    intake.task_is_long()
    # Then the consumer is cancelled and the task held in advance goes back to the queue
    assert session.calls[-2:] == [("cancel", "ctag1"), ("nack", 2, True)]
    assert intake.inbox.empty() and not intake.holds_ahead
    intake.task_is_long()   # said twice: nothing more to give back
    assert session.calls[-1] == ("nack", 2, True)


def test_intake_resumes_one_at_a_time_then_ahead_again_once_tasks_are_short():
    session, intake = intake_of()
    intake.start()
    session.deliver(1)
    take(intake)
    intake.task_is_long()
    # After the long task: one at a time
    intake.task_done(5.0)
    assert session.calls[-2:] == [("qos", 1), ("consume", QUEUE, "ctag2")]
    assert not intake.holds_ahead
    # A long one again: still one at a time
    session.deliver(2)
    take(intake)
    intake.task_done(5.0)
    assert session.calls[-1] == ("consume", QUEUE, "ctag2")
    # A short one: the next task in advance again
    session.deliver(3)
    take(intake)
    intake.task_done(0.01)
    assert session.calls[-3:] == [("cancel", "ctag2"), ("qos", 4), ("consume", QUEUE, "ctag3")]
    assert intake.holds_ahead
    assert consumes(session) == [4, 1, 4]


def test_intake_gives_back_every_task_held_in_advance():
    session, intake = intake_of()
    intake.start()
    for tag in (1, 2, 3, 4):
        session.deliver(tag)
    assert take(intake) == 1
    intake.task_is_long()
    assert session.of("nack") == [("nack", 2, True), ("nack", 3, True), ("nack", 4, True)]
    assert intake.inbox.empty()


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
