"""A connection lost while a worker child sets up (declares, consume) is said as any
lost connection: one warning, exit 3; a refusal on the channel still raises."""
import logging
import os

import pika.exceptions
import pytest

from taskqueue import worker as worker_module
from taskqueue.broker.amqp import Session
from taskqueue.errors import SessionClosed
from taskqueue.host.config import AmqpSettings, WorkerGroup
from taskqueue.supervision.child import ChildContext
from taskqueue.supervision.lifecycle import EXIT_CONNECTION

from fakes import RecordingSession


class SetupSession(RecordingSession):
    """Closes as `reason` says when the worker starts consuming."""

    def __init__(self, reason):
        super().__init__()
        self.reason = reason

    def write_promptly(self):
        return False

    def declare_queue(self, queue):
        self.calls.append(("declare", queue))

    def declare_onehop(self, worker_queues):
        return None

    def consume(self, queue, on_message):
        self.close(self.reason)
        raise SessionClosed(f"consume {queue} failed: {self.reason!r}")

    connection_lost = Session.connection_lost

    def loss(self):
        return f"lost the broker 127.0.0.1:5672 ({self.reason}); reconnecting to 127.0.0.1:5673"


class Plugin:
    torn_down = False

    def teardown(self):
        Plugin.torn_down = True


@pytest.fixture
def start(monkeypatch):
    def run(reason):
        session = SetupSession(reason)
        monkeypatch.setattr(worker_module.plugins, "load", lambda worker_type, group, entry_point=None: Plugin())
        monkeypatch.setattr(worker_module.amqp, "Session", lambda *args: _Opener(session))
        read, write = os.pipe()
        try:
            ctx = ChildContext("t#0", write, None)
            return worker_module.run_worker(WorkerGroup("t", None, 1), AmqpSettings(events=False), ctx)
        finally:
            os.close(read)
            os.close(write)
    return run


class _Opener:
    def __init__(self, session):
        self.session = session

    def open(self):
        return self.session


@pytest.mark.timeout(10)
def test_a_connection_lost_while_setting_up_is_one_warning_and_exit_3(start, caplog):
    Plugin.torn_down = False
    with caplog.at_level(logging.INFO, logger="taskqueue"):
        code = start(pika.exceptions.ConnectionClosedByBroker(541, "INTERNAL_ERROR"))
    assert code == EXIT_CONNECTION
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("lost the broker 127.0.0.1:5672 ("), warnings
    assert Plugin.torn_down


@pytest.mark.timeout(10)
def test_a_channel_refusal_while_setting_up_still_raises_with_its_message(start):
    refusal = pika.exceptions.ChannelClosedByBroker(406, "PRECONDITION_FAILED - inequivalent arg")
    # The high queue is consumed first (priorities.py)
    with pytest.raises(SessionClosed,
                       match=r"consume worker_t\+high failed: .*PRECONDITION_FAILED"):
        start(refusal)


def test_a_session_knows_a_lost_connection_from_a_refusal():
    session = Session(AmqpSettings(), "t")
    session.close_reason = pika.exceptions.StreamLostError("Transport indicated EOF")
    assert session.connection_lost
    session.close_reason = pika.exceptions.ChannelClosedByBroker(404, "NOT_FOUND")
    assert not session.connection_lost
    session.close_reason = "the broker cancelled the consumer ctag1"
    assert not session.connection_lost


@pytest.mark.parametrize("max_tasks, lookahead", [
    (None, 0.1), (1, 0), (2, 0), (3, 0), (4, 0.1), (1000, 0.1)])
def test_a_process_replaced_after_fewer_tasks_than_it_would_take_in_advance_takes_none(
        max_tasks, lookahead):
    # It would give back, at every replacement, tasks it never meant to run: each
    # give-back counts toward a quorum queue's delivery limit.
    group = WorkerGroup("w", None, 1, lookahead=0.1, max_tasks=max_tasks)
    assert worker_module._lookahead(group) == lookahead
