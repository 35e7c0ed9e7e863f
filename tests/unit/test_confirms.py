"""ConfirmWindow: many publishes in flight, each settled by the broker's answer.

The session is the recording stand-in of fakes.py, driven confirm by confirm: what is under
test is the bookkeeping (window, multiple acks, nacks, returns), not the I/O
(tests/integration covers that through `submit --file` and `dead requeue`).
"""

import gevent
import pika
import pytest

from taskqueue import confirms
from taskqueue.amqp import SessionClosed
from taskqueue.confirms import ConfirmWindow

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


def test_a_nack_or_a_return_settles_with_the_reason():
    session, window, settled = window_of()
    for n in range(1, 4):
        publish(window, n)
    session.on_return("taskqueue", pika.BasicProperties(message_id="id2"), b"m2")
    session.confirm(2, multiple=True)
    session.confirm(3, ack=False)
    assert settled[0] == (1, None)
    assert settled[1][0] == 2 and "returned it" in settled[1][1]
    assert settled[2][0] == 3 and "nack" in settled[2][1]


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
