"""A worker's side of the cancels stream (protocol/cancels.py): read it from its start,
then follow it, on a connection of its own; write a `settled` record, unconfirmed.

A connection of its own, for eventlog.py's reason: RabbitMQ stops reading from a
connection that publishes during a resource alarm, and with it that connection's
acks; the settled records are published here, never where tasks are acked (and
none while the broker says it blocks publishers). It is opened in a greenlet as
the process starts; a lost one is opened again after REOPEN seconds and read from
the stream's start again (the ids are a set: nothing is counted twice). Until the
stream was read once, sooner (retry_pause): the first task waits for it, and a
stream declared a moment before (by the supervisor or another worker) refuses
consumers for a few milliseconds with 406 "does not have a replica on the local
node" (RabbitMQ 3.10): waiting REOPEN then held every task the worker had taken
in advance for 5 s (bench/README.md, the bare-broker rows).

A stream has no end a consumer is told of (eventstream.py): reading has caught up
at the first record stamped more than eventstream.REACHED_MARGIN after reading
began, or after IDLE seconds without a delivery. A broker that refuses the stream
(no permission to declare it) turns cancels off in this process, said once: its
tasks run as if nothing were cancelled.

Stream consumers must ack (their credit) and must never reject: pika's cancel and
channel close do neither here, the whole connection is closed (eventstream.py).
"""
import logging
import time

import gevent
from gevent.event import Event
from gevent.queue import Empty, Queue
import pika

from taskqueue.broker.eventstream import reached
from taskqueue.errors import SessionClosed, TopologyError
from taskqueue.protocol import cancels, events, plans

log = logging.getLogger(__name__)

#: Seconds without a delivery after which the stream's end is taken as reached. Short:
#: a cancel read late only lets its task start, and stops it moments later.
IDLE = 0.2
#: Deliveries in flight to this consumer; acked in halves, as multiple acks.
PREFETCH = 64
#: Seconds before a lost (or never opened) cancels connection is tried again.
REOPEN = 5.0
#: Seconds before the first try again while the stream was never read to its end;
#: doubled on each failure, up to REOPEN.
FIRST_RETRY = 0.05
#: Seconds a stopping process gives the connection's close.
CLOSE_TIMEOUT = 1.0


def retry_pause(failures, caught_up):
    """Seconds before opening the stream again after its `failures`-th failure: REOPEN
    once it was read to its end (nothing waits for it), sooner before (tasks do)."""
    if caught_up:
        return REOPEN
    return min(REOPEN, FIRST_RETRY * 2 ** (failures - 1))


class CancelFollower:
    """The cancels stream, followed for the process whose Session is `session`:
    on_cancel(task_id) in a greenlet for every cancel record, the old ones first."""

    def __init__(self, session, child, on_cancel):
        self.caught_up = Event()    # read to the end once (or turned off: nothing to read)
        self.off = None             # why cancels are off in this process, or None
        self.junk = 0               # messages that were no record
        self._main = session
        self._child = child
        self._on_cancel = on_cancel
        self._side = None
        self._greenlet = None

    def start(self):
        self._greenlet = gevent.spawn(self._run)
        return self

    def _run(self):
        failures, pause = 0, REOPEN
        while True:
            try:
                self._follow()
            except TopologyError as exc:
                self._turn_off(str(exc))
                return
            except SessionClosed as exc:    # BrokerUnreachable is one
                failures += 1
                pause = retry_pause(failures, self.caught_up.is_set())
                log.info("cancels: %s; reading %s again in %gs", exc, cancels.STREAM, pause)
            gevent.sleep(pause)

    def _turn_off(self, reason):
        self.off = reason
        log.warning("cancels off in this process: %s; its tasks run even if cancelled",
                    reason)
        self.caught_up.set()

    def _follow(self):
        side = self._side = self._main.side_session("cancels")
        try:
            side.declare_plan(plans.cancel_stream(), any_refusal=True)
        except TopologyError as exc:
            if not events.kept_as_found(exc):
                side.close(CLOSE_TIMEOUT)
                raise
            log.info("%s exists with other arguments than taskqueue's; used as it is (%s)",
                     cancels.STREAM, exc)
        inbox = Queue()
        side.closed.rawlink(lambda _: inbox.put(None))
        side.qos(PREFETCH)
        began = time.time()
        side.consume(cancels.STREAM, lambda *delivery: inbox.put(delivery),
                     arguments={"x-stream-offset": "first"})
        self._read(side, inbox, began)
        raise SessionClosed(f"the cancels connection closed: {side.close_reason!r}")

    def _read(self, side, inbox, began):
        """Take deliveries until the side session closes."""
        taken = 0
        unacked = None
        while side.is_open:
            try:
                delivery = inbox.get(timeout=IDLE)
            except Empty:
                self._mark_caught_up()
                if unacked is not None:
                    side.ack(unacked, multiple=True)
                    unacked = None
                continue
            if delivery is None:
                return
            method, props, body = delivery
            taken += 1
            unacked = method.delivery_tag
            if taken % (PREFETCH // 2) == 0:
                side.ack(unacked, multiple=True)
                unacked = None
            self._take(body)
            if not self.caught_up.is_set() and reached(props.timestamp, began):
                self._mark_caught_up()

    def _take(self, body):
        found = cancels.decode(body)
        if found is None:
            self.junk += 1
            if self.junk == 1:
                log.warning("%s holds messages that are no cancel records: ignored (whoever "
                            "may publish to the vhost may write into it)", cancels.STREAM)
            return
        kind, task_id, _ = found
        if kind == cancels.CANCEL:
            self._on_cancel(task_id)

    def _mark_caught_up(self):
        if not self.caught_up.is_set():
            self.caught_up.set()
            if self.junk:
                log.info("%s read: %d messages that were no cancel records ignored",
                         cancels.STREAM, self.junk)

    def settled(self, task_id, outcome="cancelled"):
        """Append a settled record of `task_id` (never waits; dropped without a
        connection, or while the broker blocks publishers): `taskqueue status` counts
        the cancels no worker settled."""
        side = self._side
        if side is None or not side.is_open or side.blocked:
            log.debug("task %s: its settled record not written (no cancels connection)",
                      task_id)
            return
        side.publish(cancels.STREAM, cancels.record(cancels.SETTLED, task_id, self._child,
                                                    outcome=outcome),
                     pika.BasicProperties(content_type=cancels.CONTENT_TYPE, delivery_mode=2,
                                          timestamp=int(time.time())))

    def close(self):
        """Stop following; close the connection (CLOSE_TIMEOUT at most)."""
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
        side = self._side
        if side is not None and side.is_open:
            try:
                side.flush(CLOSE_TIMEOUT)
                side.close(CLOSE_TIMEOUT)
            except SessionClosed:
                pass
