"""A process's replies, on a connection of their own: a crafted reply_to costs at most
its own reply (Session.reply).

A task's reply_to is whatever its submitter wrote, and RabbitMQ closes the whole
connection of whoever publishes to some of those names: `amq.rabbitmq.reply-to.<token>`
whose token is no channel it knows (3.10: 541 INTERNAL_ERROR), garbage or a well-formed
pid of a node that does not exist, so no look at the name can tell. On the connection
that consumes, that would give back the task before its ack (it comes again and replies
again: a loop) and cost the dispatcher its unconfirmed work. So every reply (a plugin's
channel.reply(), the worker's and the dispatcher's failure replies) goes on a
connection of its own, opened on the first reply and opened again, on the next one,
after it closed.

`send` runs in the hub and never blocks (pika's callbacks call it): the reply is
queued, and the line's greenlet publishes it. The line's channel has publisher
confirms, so that a closing tells which replies it took with it: a reply alone in
flight then is the one that closed it, and is dropped; several are sent again one at a
time, each on the next connection, until the one that closes it is alone. A reply may
so come twice (it reached its queue before the close, unconfirmed): a caller takes the
first one with its correlation id. Dropped replies are said once per episode: one
WARNING, then one INFO line with the count once a reply goes through again.
"""
import collections
import logging
import time

import gevent
from gevent.event import Event

from taskqueue.broker import failover
from taskqueue.errors import BrokerUnreachable, SessionClosed
from taskqueue.printable import printable

log = logging.getLogger(__name__)

#: What RabbitMQ closes a connection with for a direct reply-to name it cannot read.
INTERNAL_ERROR = 541


class ReplyLine:
    """Replies published on a connection of their own (`open_session()`: an open
    amqp.Session, made on the first reply and again after a close)."""

    def __init__(self, open_session):
        self._open_session = open_session
        self._queued = collections.deque()      # (reply_to, body, props) to publish, in order
        self._suspects = collections.deque()    # in flight at a close: sent one at a time
        self._in_flight = {}        # sequence number -> (reply, suspect) on this session
        self._sent = 0              # the last sequence number of this session
        self._session = None
        self._wake = Event()        # something to send, or closing
        self._idle = Event()        # nothing waits for pika: what flush() waits for
        self._idle.set()
        self._settled = Event()     # a confirm or a close: a suspect's fate is known
        self._greenlet = None
        self._losses = LossEpisode()
        self._closing = False

    def send(self, reply_to, body, props):
        """Queue a reply for the line's greenlet; in the hub, never blocks."""
        if self._closing:
            log.warning("reply to %s not sent: the process is stopping", _name(reply_to))
            return
        self._queued.append((reply_to, body, props))
        self._idle.clear()
        self._wake.set()
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._run)

    @property
    def waiting(self):
        """Replies not yet handed to pika."""
        return len(self._queued) + len(self._suspects)

    def flush(self, timeout):
        """Wait (a greenlet) until every reply is handed to pika and pika's buffer is in
        the kernel's, or `timeout` seconds passed: from there a reply reaches the broker
        even if this process dies next."""
        deadline = time.monotonic() + timeout
        if self.waiting and not self._closing:
            self._idle.wait(timeout)
        if self._session is not None and self._session.is_open:
            self._session.flush(max(0.0, deadline - time.monotonic()))

    def close(self, timeout):
        """Send what waits (within `timeout`), then close the line's connection cleanly."""
        self.flush(timeout)
        self._closing = True
        self._idle.set()
        self._wake.set()
        if self._session is not None:
            self._session.close(timeout)
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=1.0)
        if self.waiting:
            log.warning("%d replies not sent: the process stopped first", self.waiting)

    # -- the line's greenlet ------------------------------------------------

    def _run(self):
        try:
            self._serve()
        except Exception:   # a bug here must cost the replies, never the process
            log.exception("the reply line failed; %d replies not sent", self.waiting)
            self._queued.clear()
            self._suspects.clear()
            self._idle.set()    # the next reply starts the line afresh

    def _serve(self):
        while not self._closing:
            if self._session is not None and not self._session.is_open:
                self._account_close(self._session)
                continue
            if not self.waiting:
                self._idle.set()
                self._wake.clear()
                self._wake.wait()
                continue
            session = self._connected()
            if session is None:
                continue
            if self._suspects:
                self._send_suspect(session)
                continue
            while self._queued and session.is_open:
                self._publish(session, self._queued.popleft(), suspect=False)

    def _connected(self):
        """The line's open session, opened if need be; None when no broker took it (what
        waits is dropped then: said once; the next reply tries again)."""
        if self._session is not None and self._session.is_open:
            return self._session
        session = None
        try:
            session = self._open_session()
            session.enable_confirms(lambda frame: self._on_confirm(session, frame),
                                    lambda *returned: None)    # not mandatory: none come
        except (BrokerUnreachable, SessionClosed) as exc:
            dropped = self.waiting
            self._queued.clear()
            self._suspects.clear()
            log.warning("%d replies not sent: no connection for replies: %s", dropped, exc)
            if session is not None:
                session.close()
            return None
        self._session, self._sent, self._in_flight = session, 0, {}
        session.closed.rawlink(lambda _: self._wake.set())   # the loop accounts for it
        return session

    def _send_suspect(self, session):
        """Send the first suspect alone and wait until the broker confirmed it or closed
        the connection over it."""
        if not self._in_flight:
            self._settled.clear()
            self._publish(session, self._suspects[0], suspect=True)
        if self._in_flight:
            gevent.wait([self._settled, session.closed], count=1)

    def _publish(self, session, reply, suspect):
        reply_to, body, props = reply
        try:
            session.publish(reply_to, body, props)
        except Exception:
            if not session.is_open:     # closed under us: sent on the next connection
                if not suspect:
                    self._queued.appendleft(reply)
                return
            # pika encodes every frame before it sends one: nothing went, nor will
            log.exception("reply to %s not sent", _name(reply_to))
            if suspect:
                self._suspects.popleft()
            return
        self._sent += 1
        self._in_flight[self._sent] = (reply, suspect)

    # -- in the hub: pika's callback -------------------------------------------

    def _on_confirm(self, session, frame):
        if session is not self._session:
            return
        confirm = frame.method
        seqs = ([seq for seq in self._in_flight if seq <= confirm.delivery_tag]
                if confirm.multiple else [confirm.delivery_tag])
        for seq in sorted(seqs):
            settled = self._in_flight.pop(seq, None)
            if settled is None:
                continue
            (reply_to, _, _), suspect = settled
            if suspect:
                self._suspects.popleft()
            if confirm.NAME == "Basic.Ack":
                self._losses.delivered(time.monotonic())
            else:
                log.warning("the broker nacked a reply to %s; its caller waits out its "
                            "timeout", _name(reply_to))
        self._settled.set()

    def _account_close(self, session):
        """What a closed session took with it: a reply alone in flight is lost (it
        closed it); several become suspects, each sent again alone."""
        self._session = None
        lost = [reply for _, (reply, _) in sorted(self._in_flight.items())]
        was_suspect = any(suspect for _, suspect in self._in_flight.values())
        self._in_flight = {}
        if len(lost) == 1:      # alone in flight: the reply that closed it
            if was_suspect:
                self._suspects.popleft()
            self._losses.lost(lost[0][0], session.close_reason, time.monotonic())
        elif lost:              # which one? each goes again alone
            self._suspects.extendleft(reversed(lost))
            log.debug("the reply connection closed with %d replies in flight (%s): each is "
                      "sent again alone", len(lost), failover.reason(session.close_reason))


class LossEpisode:
    """Says replies lost with their connection once per episode, not once per reply: a
    submitter sending many crafted reply_to would otherwise write a line each. One
    WARNING at the first; one INFO line, with the count, once a reply goes through."""

    def __init__(self):
        self.count = 0
        self.since = None

    def lost(self, reply_to, close_reason, now):
        why = failover.reason(close_reason)
        self.count += 1
        if self.since is not None:
            log.debug("a reply to %s is lost too (%s)", _name(reply_to), why)
            return
        self.since = now
        crafted = getattr(close_reason, "reply_code", None) == INTERNAL_ERROR
        log.warning("a reply to %s is lost: the reply connection closed as it went (%s)%s; "
                    "replies go on over a new connection", _name(reply_to),
                    why, "; RabbitMQ does so for a direct reply-to name of no channel it "
                    "knows: a crafted reply_to?" if crafted else "")

    def delivered(self, now):
        if self.since is not None:
            log.info("replies go through again: %d lost over %.1fs", self.count,
                     now - self.since)
            self.count, self.since = 0, None


def _name(reply_to):
    """A reply_to as a log line shows it: one word, escaped (it is the submitter's text)."""
    return printable(reply_to if isinstance(reply_to, str) else repr(reply_to), spaces=False)
