"""The reply line (broker/replyline.py): replies on a connection of their own, opened on
the first reply and again after a close; a reply alone in flight when the broker closed
the connection is the one lost, said once per episode; several in flight go again one at
a time. Driven with a stand-in session under a real gevent hub; the real broker's side
is tests/integration/test_crafted_reply_to.py."""
import logging
import time
from types import SimpleNamespace

import gevent
import pika
import pika.exceptions
import pytest
from gevent.event import Event

from taskqueue.broker.replyline import ReplyLine
from taskqueue.errors import BrokerUnreachable

CRAFTED = "amq.rabbitmq.reply-to.aGVsbG8gd29ybGQ=.MDEy"
REFUSED = pika.exceptions.ConnectionClosedByBroker(541, "INTERNAL_ERROR")


class LineSession:
    """What the line uses of an amqp.Session: publish, confirms, closed, flush, close."""

    def __init__(self, number):
        self.number = number
        self.closed = Event()
        self.close_reason = None
        self.published = []     # reply_to, in order: sequence number = index + 1

    @property
    def is_open(self):
        return not self.closed.is_set()

    def enable_confirms(self, on_confirm, on_return):
        self.on_confirm = on_confirm

    def publish(self, reply_to, body, props):
        if not self.is_open:
            raise pika.exceptions.ChannelWrongStateError("channel closed")
        if body == b"unencodable":
            raise TypeError("cannot encode")
        self.published.append(reply_to)

    def ack(self, seq, multiple=False):
        self.on_confirm(SimpleNamespace(method=pika.spec.Basic.Ack(seq, multiple)))

    def broker_closes(self, reason=REFUSED):
        self.close_reason = reason
        self.closed.set()

    def flush(self, timeout):
        pass

    def close(self, timeout=None):
        self.closed.set()


class Broker:
    """Opens LineSessions; `down` makes opening fail as an unreachable broker does."""

    def __init__(self):
        self.sessions = []
        self.down = False

    def open(self):
        if self.down:
            raise BrokerUnreachable("cannot connect to the broker: 127.0.0.1:5672: refused")
        self.sessions.append(LineSession(len(self.sessions) + 1))
        return self.sessions[-1]


def settle(until, what, timeout=5):
    """Let the hub and the line's greenlet run until `until()` holds."""
    with gevent.Timeout(timeout, AssertionError(f"timed out waiting for {what}")):
        while not until():
            gevent.sleep(0.001)


@pytest.fixture
def broker():
    return Broker()


@pytest.fixture
def line(broker):
    line = ReplyLine(broker.open)
    yield line
    line.close(1.0)


def send(line, reply_to, body=b"r"):
    line.send(reply_to, body, pika.BasicProperties(correlation_id="c"))


def test_no_connection_before_the_first_reply_and_one_for_many(line, broker):
    gevent.sleep(0.01)
    assert broker.sessions == []
    for n in range(3):
        send(line, f"amq.gen-{n}")
    settle(lambda: broker.sessions and len(broker.sessions[0].published) == 3, "3 published")
    assert broker.sessions[0].published == ["amq.gen-0", "amq.gen-1", "amq.gen-2"]
    assert len(broker.sessions) == 1 and line.waiting == 0


def test_send_returns_at_once_while_the_line_is_still_opening(line, broker):
    send(line, "amq.gen-a")         # in the hub: queued, nothing opened yet
    assert broker.sessions == [] and line.waiting == 1
    line.flush(1.0)                 # the worker's wait before its next task
    assert broker.sessions[0].published == ["amq.gen-a"] and line.waiting == 0


def test_a_reply_alone_in_flight_when_the_broker_closes_is_lost_said_once_per_episode(
        line, broker, caplog):
    caplog.set_level(logging.DEBUG, logger="taskqueue.broker.replyline")
    for n in range(3):
        send(line, CRAFTED + f"\x1b[{n}")
        settle(lambda: len(broker.sessions) == n + 1 and broker.sessions[n].published,
               f"crafted reply {n} published")
        broker.sessions[n].broker_closes()
    send(line, "amq.gen-ok")
    settle(lambda: len(broker.sessions) == 4 and broker.sessions[3].published, "the good reply")
    broker.sessions[3].ack(1)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].getMessage() == (
        f"a reply to {CRAFTED}\\x1b[0 is lost: the reply connection closed as it went (closed "
        "by the broker: 541 INTERNAL_ERROR); RabbitMQ does so for a direct reply-to name of "
        "no channel it knows: a crafted reply_to?; replies go on over a new connection")
    assert "replies go through again: 3 lost over" in caplog.text
    assert broker.sessions[3].published == ["amq.gen-ok"]     # no lost one sent again


def test_replies_in_flight_together_go_again_one_at_a_time_until_the_culprit_is_alone(
        line, broker, caplog):
    send(line, "amq.gen-before")
    send(line, CRAFTED)
    send(line, "amq.gen-after")
    settle(lambda: broker.sessions and len(broker.sessions[0].published) == 3, "3 in flight")
    broker.sessions[0].ack(1)                   # the first went through
    broker.sessions[0].broker_closes()          # the crafted one closed it: which one?
    send(line, "amq.gen-later")                 # waits behind the suspects
    settle(lambda: len(broker.sessions) == 2 and broker.sessions[1].published, "a suspect")
    gevent.sleep(0.01)
    assert broker.sessions[1].published == [CRAFTED]      # alone
    broker.sessions[1].broker_closes()          # so it was that one
    settle(lambda: len(broker.sessions) == 3 and broker.sessions[2].published, "the next")
    gevent.sleep(0.01)
    assert broker.sessions[2].published == ["amq.gen-after"]      # alone too, until confirmed
    broker.sessions[2].ack(1)
    settle(lambda: len(broker.sessions[2].published) == 2, "the one that waited")
    assert broker.sessions[2].published == ["amq.gen-after", "amq.gen-later"]
    assert len(broker.sessions) == 3 and line.waiting == 0
    assert caplog.text.count("is lost") == 1 and CRAFTED in caplog.text


def test_an_idle_line_closed_by_the_broker_opens_again_on_the_next_reply(line, broker, caplog):
    send(line, "amq.gen-1")
    settle(lambda: broker.sessions and broker.sessions[0].published, "the first reply")
    broker.sessions[0].ack(1)
    broker.sessions[0].broker_closes(pika.exceptions.ConnectionClosedByBroker(
        320, "CONNECTION_FORCED - broker forced connection closure"))
    send(line, "amq.gen-2")
    settle(lambda: len(broker.sessions) == 2 and broker.sessions[1].published, "the second")
    assert "is lost" not in caplog.text


def test_no_broker_drops_what_waits_said_and_the_next_reply_tries_again(line, broker, caplog):
    broker.down = True
    send(line, "amq.gen-1")
    send(line, "amq.gen-2")
    settle(lambda: line.waiting == 0, "the replies dropped")
    assert "2 replies not sent: no connection for replies: cannot connect" in caplog.text
    broker.down = False
    send(line, "amq.gen-3")
    settle(lambda: broker.sessions and broker.sessions[0].published == ["amq.gen-3"], "sent")


def test_a_reply_pika_cannot_encode_is_said_and_the_next_goes(line, broker, caplog):
    send(line, "amq.gen-1", body=b"unencodable")
    send(line, "amq.gen-2")
    settle(lambda: broker.sessions and broker.sessions[0].published == ["amq.gen-2"], "sent")
    assert "reply to amq.gen-1 not sent" in caplog.text


def test_close_sends_what_waits_first_and_refuses_later_replies(broker, caplog):
    line = ReplyLine(broker.open)
    send(line, "amq.gen-1")
    line.close(1.0)
    assert broker.sessions[0].published == ["amq.gen-1"] and broker.sessions[0].closed.is_set()
    send(line, "amq.gen-2")
    assert "reply to amq.gen-2 not sent: the process is stopping" in caplog.text


def test_a_bug_in_the_line_costs_the_replies_that_wait_and_the_next_reply_starts_afresh(
        broker, caplog):
    calls = []

    def open_session():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return broker.open()
    line = ReplyLine(open_session)
    send(line, "amq.gen-1")
    started = time.monotonic()
    line.flush(5.0)
    assert time.monotonic() - started < 1.0     # the line said it is idle: no timeout waited
    assert "the reply line failed; 1 replies not sent" in caplog.text and line.waiting == 0
    send(line, "amq.gen-2")
    settle(lambda: broker.sessions and broker.sessions[0].published == ["amq.gen-2"], "sent")
    line.close(1.0)
