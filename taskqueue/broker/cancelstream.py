"""A worker's side of the cancels stream (protocol/cancels.py): read it from its start,
then follow it, on a side connection; write a `settled` record, unconfirmed.

A side connection (sideline.py: the worker shares it with its task events), for
eventlog.py's reason: RabbitMQ stops reading from a connection that publishes
during a resource alarm, and with it that connection's acks; the settled records
are published there, never where tasks are acked (and none while the broker says
it blocks publishers). The stream is read on a channel of its own, opened in a
greenlet once the process consumes its tasks; a lost one (its channel or the
connection) is opened again after REOPEN seconds and read from the stream's start
again (the ids are a set: nothing is counted twice). Until the stream was read
once, sooner (retry_pause): the first task waits for it, and a stream declared a
moment before (by the supervisor or another worker) refuses consumers for a few
milliseconds with 406 "does not have a replica on the local node" (RabbitMQ
3.10), which closes the channel: waiting REOPEN then held every task the worker
had taken in advance for 5 s (bench/README.md, the bare-broker rows).

A stream has no end a consumer is told of (eventstream.py): reading has caught up
at the first record stamped more than eventstream.REACHED_MARGIN after reading
began, or after IDLE seconds without a delivery. A broker that refuses the stream
(no permission to declare it) turns cancels off in this process, said once: its
tasks run as if nothing were cancelled.

Stream consumers must ack (their credit) and must never reject: reading stops by
closing the channel or the connection, which rejects nothing.
"""
import logging
import time

import gevent
from gevent.event import AsyncResult, Event
from gevent.queue import Empty, Queue
import pika

from taskqueue.broker.eventstream import reached
from taskqueue.broker.pikaparams import REPLY_TIMEOUT
from taskqueue.broker.sideline import SideLine
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
#: Seconds a stopping process gives the channel's or the connection's close.
CLOSE_TIMEOUT = 1.0


def retry_pause(failures, caught_up):
    """Seconds before opening the stream again after its `failures`-th failure: REOPEN
    once it was read to its end (nothing waits for it), sooner before (tasks do)."""
    if caught_up:
        return REOPEN
    return min(REOPEN, FIRST_RETRY * 2 ** (failures - 1))


class CancelFollower:
    """The cancels stream, followed for the process whose Session is `session`:
    on_cancel(task_id) in a greenlet for every cancel record, the old ones first.
    `line`: the sideline.SideLine to read on, shared with others (each closes it when
    done); None: one of its own, closed by close()."""

    def __init__(self, session, child, on_cancel, line=None):
        self.caught_up = Event()    # read to the end once (or turned off: nothing to read)
        self.off = None             # why cancels are off in this process, or None
        self.junk = 0               # messages that were no record
        self._own_line = line is None
        self._line = SideLine(session, "cancels") if line is None else line
        self._child = child
        self._on_cancel = on_cancel
        self._side = None           # the side Session of the stream's channel
        self._channel = None        # the stream's channel on it
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
                caught_up = self.caught_up.is_set()
                pause = retry_pause(failures, caught_up)
                # A first failure before the first read is mostly the stream's replica
                # not ready yet (406, the docstring): expected, retried at once, unsaid.
                level = logging.DEBUG if failures == 1 and not caught_up else logging.INFO
                log.log(level, "cancels: %s; reading %s again in %gs", exc, cancels.STREAM,
                        pause)
            gevent.sleep(pause)

    def _turn_off(self, reason):
        self.off = reason
        log.warning("cancels off in this process: %s; its tasks run even if cancelled",
                    reason)
        self.caught_up.set()

    def _follow(self):
        side = self._side = self._line.session()
        try:
            side.declare_plan(plans.cancel_stream(), any_refusal=True)
        except TopologyError as exc:
            if not events.kept_as_found(exc):
                if self._own_line:
                    self._line.close(CLOSE_TIMEOUT)
                raise
            log.info("%s exists with other arguments than taskqueue's; used as it is (%s)",
                     cancels.STREAM, exc)
        channel = self._channel = side.open_channel()
        inbox, lost = Queue(), AsyncResult()

        def channel_closed(_channel, reason):
            lost.set(reason)
            inbox.put(None)
        channel.add_on_close_callback(channel_closed)

        def connection_closed(_event):
            inbox.put(None)
        side.closed.rawlink(connection_closed)
        try:
            self._call(side, channel, lost, "basic.qos", channel.basic_qos,
                       prefetch_count=PREFETCH)
            began = time.time()
            self._call(side, channel, lost, f"consume {cancels.STREAM}", channel.basic_consume,
                       cancels.STREAM,
                       lambda _ch, method, props, body: inbox.put((method, props, body)),
                       arguments={"x-stream-offset": "first"})
            self._read(side, channel, inbox, began)
        finally:
            side.closed.unlink(connection_closed)   # the connection may serve another channel
            if channel.is_open:     # killed (close()) or gone wrong: read no more here
                channel.close()
        reason = lost.get() if lost.ready() else side.close_reason
        raise SessionClosed(f"the cancels channel closed: {reason!r}")

    @staticmethod
    def _call(side, channel, lost, what, method, *args, **kwargs):
        """Call a pika channel `method` and wait for its reply (a greenlet):
        SessionClosed if the channel or the connection goes first."""
        reply = AsyncResult()
        method(*args, callback=reply.set, **kwargs)
        gevent.wait([reply, lost, side.closed], count=1, timeout=REPLY_TIMEOUT)
        if reply.ready():
            return reply.get()
        reason = lost.get() if lost.ready() else side.close_reason
        raise SessionClosed(f"{what} failed: {reason!r}" if reason is not None
                            else f"{what}: no reply in {REPLY_TIMEOUT:g}s")

    def _read(self, side, channel, inbox, began):
        """Take deliveries until the channel or the side session closes."""
        taken = 0
        unacked = None
        while side.is_open and channel.is_open:
            try:
                delivery = inbox.get(timeout=IDLE)
            except Empty:
                self._mark_caught_up()
                if unacked is not None and channel.is_open:
                    channel.basic_ack(unacked, multiple=True)
                    unacked = None
                continue
            if delivery is None:
                return
            method, props, body = delivery
            taken += 1
            unacked = method.delivery_tag
            if taken % (PREFETCH // 2) == 0:
                channel.basic_ack(unacked, multiple=True)
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
        """Stop following; close the side connection (CLOSE_TIMEOUT at most; a shared one
        once its last user closes it)."""
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
        self._line.close(CLOSE_TIMEOUT)
