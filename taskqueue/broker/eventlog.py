"""A daemon's task events (protocol/events.py): gathered in batches, published to the
events stream without confirms, on a side connection (sideline.py: of their own, or
shared with a worker's cancels reader), never waited for by a task.

A side connection, because RabbitMQ stops reading from a connection that
publishes during a resource alarm (memory, disk), and with it that connection's acks:
a worker that published its events where it consumes would stall at the first alarm
(tests/integration/test_events_alarm.py: 4 of 12 tasks done). The side connection
is opened, and the stream declared, in a greenlet once the process serves: a
restarted worker consumes as soon as before. Events made meanwhile wait in the
batch (at most WAITING). While the broker says it blocks publishers
(connection.blocked) events are dropped, so that pika's buffer cannot grow for the
length of an alarm. A lost events connection is opened again on a later flush, at
most every REOPEN seconds. A broker that refuses the stream (no stream support, no
permission) turns events off for the process, said once; one that declared it with
other arguments is used as it is.
"""
import logging
import time

import gevent
import pika

from taskqueue.broker.sideline import SideLine
from taskqueue.errors import BrokerUnreachable, SessionClosed, TopologyError
from taskqueue.protocol import events, plans

log = logging.getLogger(__name__)

#: Most events kept while the connection is not open yet (or no more): beyond, dropped.
WAITING = 4 * events.BATCH
#: Seconds between attempts to open the events connection again.
REOPEN = 5.0
#: Seconds a stopping process gives its last events and the connection's close.
CLOSE_TIMEOUT = 1.0


class EventLog:
    """Task events of one process whose Session is `session`. `add` (hub, never blocks)
    appends an event; a batch goes out when it holds events.BATCH or is events.FLUSH
    seconds old, and at close(). `line`: the sideline.SideLine to publish on, shared
    with others (each closes it when done); None: one of its own, closed by close()."""

    def __init__(self, session, child, settings=None, line=None):
        self.settings = settings or session.settings
        self.enabled = self.settings.events
        self.origin = events.source(child)
        self.lost = 0               # events dropped: no connection, the connection went, an alarm
        self._own_line = line is None
        self._line = SideLine(session, "events") if line is None else line
        self._side = None           # the side Session, once open and the stream declared
        self._opening = None        # the greenlet opening it
        self._next_open = 0.0       # monotonic time before which no new attempt is made
        self._paused = 0            # events dropped during this alarm, said when it ends
        self._batch = []
        self._timer = None

    def start(self):
        """Open the events' connection and declare the stream, in the background."""
        if self.enabled and (self._opening is None or self._opening.dead):
            self._next_open = time.monotonic() + REOPEN
            self._opening = gevent.spawn(self._open)
        return self

    def _open(self):
        try:
            side = self._line.session()
        except (BrokerUnreachable, SessionClosed) as exc:
            log.debug("task events: %s", exc)
            return
        try:
            side.declare_plan(plans.event_stream(self.settings), any_refusal=True)
        except TopologyError as exc:
            if not events.kept_as_found(exc):
                if self._own_line:
                    self._line.close(CLOSE_TIMEOUT)
                self._turn_off(str(exc))
                return
            log.info("%s exists with other arguments than this config's; used as it is (%s)",
                     events.STREAM, exc)
        except SessionClosed as exc:
            log.debug("task events: %s", exc)
            return
        self._side = side
        if self._batch:
            self.flush()

    def _turn_off(self, reason):
        log.warning("task events off in this process: %s", reason)
        self.enabled = False
        self.lost += len(self._batch)
        self._batch = []

    def add(self, kind, task, worker_type, **fields):
        """Record event `kind` of `task` (events.event's fields)."""
        if not self.enabled:
            return
        self._batch.append(events.event(kind, task, worker_type, **fields))
        if len(self._batch) >= events.BATCH:
            self.flush()
        elif self._timer is None:
            self._timer = gevent.spawn_later(events.FLUSH, self._flush_late)

    def _flush_late(self):
        self._timer = None
        self.flush()

    def flush(self):
        """Publish the batch now (hub or greenlet; never waits)."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.kill(block=False)
        if not self._batch:
            return
        side = self._side
        if side is None or not side.is_open:
            self._drop_beyond(WAITING)
            if (side is not None or self._opening is not None) \
                    and time.monotonic() >= self._next_open:
                self._side = None
                self.start()    # gone, or never opened: try again
            return
        if side.blocked:
            if not self._paused:
                log.warning("the broker blocks publishers (a resource alarm): task events "
                            "paused, dropped until it ends; tasks go on")
            self._paused += len(self._batch)
            self._drop_beyond(0)
            return
        if self._paused:
            log.info("task events resumed: %d dropped during the alarm", self._paused)
            self._paused = 0
        body, self._batch = events.encode(self.origin, self._batch), []
        side.publish(events.STREAM, body, pika.BasicProperties(
            content_type=events.CONTENT_TYPE, delivery_mode=2, timestamp=int(time.time())))

    def _drop_beyond(self, kept):
        if len(self._batch) > kept:
            self.lost += len(self._batch) - kept
            del self._batch[kept:]

    def close(self):
        """Publish what is left and close the side connection (CLOSE_TIMEOUT at most; a
        shared one once its last user closes it)."""
        if self._opening is not None and not self._opening.dead:
            self._opening.join(timeout=CLOSE_TIMEOUT)   # a process that stops at once
        self.flush()
        self._line.close(CLOSE_TIMEOUT)
        if self.lost:
            log.info("%d task events were not written (no connection to the stream, or "
                     "an alarm)", self.lost)


class NoEvents:
    """What records no event: for code run without a session of its own (unit tests)."""

    def add(self, kind, task, worker_type, **fields):
        pass

    def flush(self):
        pass

    def close(self):
        pass
