"""ConfirmWindow: many publishes in flight, each settled by the broker's answer.

The session is the recording stand-in of fakes.py, driven confirm by confirm: what is under
test is the bookkeeping (window, multiple acks, nacks, returns), not the I/O
(tests/integration covers that through `submit --file` and `dead requeue`).
"""

import time

import gevent
import pika
import pytest

from taskqueue.broker import confirms
from taskqueue.broker.confirms import ConfirmWindow
from taskqueue.errors import SessionClosed
from taskqueue.protocol import nacks

from fakes import RecordingSession


def window_of(size=10):
    session, settled = RecordingSession(), []
    window = ConfirmWindow(session, lambda token, problem: settled.append((token, problem)), size)
    return session, window, settled


def publish(window, n):
    window.publish("taskqueue", f"m{n}".encode(), pika.BasicProperties(message_id=f"id{n}"), n)


def test_multiple_and_single_acks_settle_exactly_the_messages_they_cover():
    session, window, settled = window_of()
    for n in range(1, 6):
        publish(window, n)
    session.confirm(4)
    session.confirm(3, multiple=True)
    assert settled == [(4, None), (1, None), (2, None), (3, None)]
    session.confirm(5, multiple=True)
    assert settled[-1] == (5, None) and window.unconfirmed == 0


def test_a_return_settles_with_the_reason_and_is_not_published_again():
    session, window, settled = window_of()
    for n in range(1, 3):
        publish(window, n)
    session.on_return("taskqueue", pika.BasicProperties(message_id="id2"), b"m2")
    session.confirm(2, multiple=True)
    assert settled[0] == (1, None)
    assert settled[1][0] == 2 and "returned it" in settled[1][1]
    assert window.flush(0.2) and session.published == [b"m1", b"m2"]


@pytest.fixture
def quick_nacks(monkeypatch):
    monkeypatch.setattr(nacks, "DELAYS", (0.01, 0.02))


def test_a_nacked_message_is_published_again_and_settles_when_the_broker_takes_it(quick_nacks):
    session, window, settled = window_of()
    publish(window, 1)
    publish(window, 2)
    session.confirm(1, ack=False)
    session.confirm(2)
    assert settled == [(2, None)] and window.unconfirmed == 1
    # The second try goes out once its wait is over, after what was published meanwhile
    gevent.spawn(window.flush)
    wait_for(lambda: len(session.published) == 3)
    assert session.published == [b"m1", b"m2", b"m1"]
    session.confirm(3)
    assert settled == [(2, None), (1, None)] and window.flush(1)


def test_a_message_nacked_at_every_try_is_refused_after_the_last_naming_the_tries(quick_nacks):
    session, window, settled = window_of()
    publish(window, 1)
    flushing = gevent.spawn(window.flush)
    for seq in range(1, nacks.TRIES + 1):
        wait_for(lambda: len(session.published) == seq)
        assert settled == []
        session.confirm(seq, ack=False)
    flushing.join(1)
    assert flushing.value is True and len(session.published) == 3
    assert settled == [(1, "the broker refused it (nack; 3 tries in 0.03 s): is the queue full "
                           "(max-length with reject-publish)?")]


def test_messages_waiting_to_be_tried_again_take_room_in_the_window(quick_nacks):
    session, window, settled = window_of(size=2)
    publish(window, 1)
    publish(window, 2)
    session.confirm(2, multiple=True, ack=False)
    third = gevent.spawn(publish, window, 3)
    # The two nacked ones go out again before the third finds room
    wait_for(lambda: len(session.published) == 4)
    assert not third.dead
    session.confirm(4, multiple=True)
    third.join(1)
    assert session.published[-1] == b"m3"


def wait_for(predicate, timeout=2):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        gevent.sleep(0.005)


def test_publish_waits_while_the_window_is_full_and_goes_on_after_a_confirm():
    session, window, settled = window_of(size=3)
    for n in range(1, 4):
        publish(window, n)
    fourth = gevent.spawn(publish, window, 4)
    gevent.sleep(0)   # the publisher runs until it blocks on the full window
    assert len(session.published) == 3
    session.confirm(1)
    fourth.join(1)
    assert len(session.published) == 4


def test_a_closed_session_or_a_silent_broker_ends_the_wait(monkeypatch):
    session, window, _ = window_of(size=1)
    publish(window, 1)
    gevent.spawn_later(0.05, session.closed.set)
    with pytest.raises(SessionClosed, match="connection lost with 1 messages unconfirmed"):
        window.flush()
    monkeypatch.setattr(confirms, "STALL_TIMEOUT", 0.2)
    session, window, _ = window_of(size=1)
    publish(window, 1)
    with pytest.raises(SessionClosed, match="no confirm from the broker"):
        publish(window, 2)


def test_a_failing_owner_callback_aborts_the_session_instead_of_raising_into_pika():
    session = RecordingSession()
    window = ConfirmWindow(session, lambda token, problem: 1 / 0)
    publish(window, 1)
    session.confirm(1)
    assert session.aborted
