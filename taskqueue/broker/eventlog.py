"""A daemon's task events (protocol/events.py), on its gevent Session: gathered in
batches, published to the events stream without confirms on a channel of their own,
never waited for by a task.

The stream is declared, and the channel opened, in a greenlet of its own as the
process starts: a restarted worker consumes at once, as before events. Events
made meanwhile wait in the batch (at most WAITING). A broker that refuses the
stream (no stream support, no permission) turns events off for this process,
said once; one that declared it with other arguments is used as it is.

While the broker blocks publishers (a memory or disk alarm: connection.blocked),
events are dropped, not published: RabbitMQ stops reading from a connection that
publishes during an alarm, and with it the worker's acks on that connection.
A task's own publishes (a retry, a dead letter) wait as they must; its events
never make it wait.
"""
import logging
import time

import gevent
import pika

from taskqueue.errors import SessionClosed, TopologyError
from taskqueue.protocol import events, plans

log = logging.getLogger(__name__)

#: Most events kept while the channel is not open yet (or no more): beyond, dropped.
WAITING = 4 * events.BATCH


class EventLog:
    """Task events of one process. `add` (hub, never blocks) appends an event; a batch
    goes out when it holds events.BATCH or is events.FLUSH seconds old, and at close()."""

    def __init__(self, session, child, settings=None):
        settings = settings or session.settings
        self.session = session
        self.settings = settings
        self.enabled = settings.events
        self.origin = events.source(child)
        self.lost = 0               # events dropped: no channel, the connection went, an alarm
        self._paused = 0            # events dropped during this alarm, said when it ends
        self._batch = []
        self._channel = None
        self._opening = None
        self._timer = None

    def start(self):
        """Declare the stream and open the channel, in the background."""
        if self.enabled and self._opening is None:
            self._opening = gevent.spawn(self._open)
        return self

    def _open(self):
        try:
            self.session.declare_plan(plans.event_stream(self.settings), any_refusal=True)
        except TopologyError as exc:
            if not events.kept_as_found(exc):
                self._turn_off(str(exc))
                return
            log.info("%s exists with other arguments than this config's; used as it is (%s)",
                     events.STREAM, exc)
        except SessionClosed as exc:
            log.debug("task events: %s", exc)   # the process starts over on a lost session
            return
        try:
            self._channel = self.session.open_channel()
        except SessionClosed as exc:
            log.debug("task events: %s", exc)
            return
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
        if self.session.blocked:
            if not self._paused:
                log.warning("the broker blocks publishers (a resource alarm): task events "
                            "paused, dropped until it ends; tasks go on")
            self._paused += len(self._batch)
            self.lost += len(self._batch)
            self._batch = []
            return
        if self._paused:
            log.info("task events resumed: %d dropped during the alarm", self._paused)
            self._paused = 0
        channel = self._channel
        if channel is None or not channel.is_open:
            if channel is not None or len(self._batch) > WAITING:
                self.lost += len(self._batch)     # gone, or never coming: telemetry, dropped
                self._batch = []
            return
        body, self._batch = events.encode(self.origin, self._batch), []
        channel.basic_publish("", events.STREAM, body, pika.BasicProperties(
            content_type=events.CONTENT_TYPE, delivery_mode=2, timestamp=int(time.time())))

    def close(self):
        """Publish what is left (the session's close then writes it out)."""
        if self._opening is not None and not self._opening.dead:
            self._opening.join(timeout=0.5)     # a process that stops at once: its first events
        self.flush()
        if self.lost:
            log.info("%d task events were not written (no channel to the stream)", self.lost)


class NoEvents:
    """What records no event: for code run without a session of its own (unit tests)."""

    def add(self, kind, task, worker_type, **fields):
        pass

    def flush(self):
        pass

    def close(self):
        pass
