"""The `submitted` events of taskqueue's clients (protocol/events.py), on a blocking
connection: the Client's, the bulk publisher's.

Published without confirms on a channel of their own, after the task is
confirmed: one message per Client call, one per events.BATCH tasks of a bulk
submit. Never the caller's failure: a broker that refuses the stream turns
events off for this connection, said once; a lost connection costs the events
not sent (the task's own publish says the connection went).
"""
import logging
import time

import pika

from taskqueue.broker import blocking, declarations
from taskqueue.errors import TopologyError
from taskqueue.protocol import events, plans

log = logging.getLogger(__name__)


class SubmittedEvents:
    """`submitted` events of tasks published on `connection` (a pika BlockingConnection)."""

    def __init__(self, connection, settings, name):
        self.connection = connection
        self.settings = settings
        self.enabled = settings.events
        self.origin = events.source(name)
        self._channel = None
        self._batch = []

    def add(self, task, worker_type, delay=None, trace=None, at=None):
        """A task the broker confirmed, published `at` (its time: a worker may start it
        before the confirm comes back); sent by the next flush(). Never sends: it may be
        called from a callback of the connection (a confirm), where no declare may wait."""
        if self.enabled:
            self._batch.append(events.event("submitted", task, worker_type, at,
                                            delay=delay, trace=trace))

    def prepare(self):
        """Declare the stream and open the channel now, not in the first flush(): for
        an owner that bounds its waits for the broker at connecting time
        (submitline.py). A broker that refuses the stream turns events off, as there."""
        if self.enabled:
            self._open()

    @property
    def full(self):
        return len(self._batch) >= events.BATCH

    def flush(self):
        batch, self._batch = self._batch, []
        if not batch or not self.enabled:
            return
        try:
            channel = self._open()
            if channel is not None:
                channel.basic_publish("", events.STREAM, events.encode(self.origin, batch), pika.BasicProperties(
                    content_type=events.CONTENT_TYPE, delivery_mode=2,
                    timestamp=int(time.time())))
        except blocking.CONNECTION_LOST as exc:
            log.debug("%d submitted events not sent: %r", len(batch), exc)
            self._channel = None

    def _open(self):
        if self._channel is not None and self._channel.is_open:
            return self._channel
        try:
            declarations.run(plans.event_stream(self.settings),
                             blocking.declaring_channels(self.connection))
        except TopologyError as exc:
            if not events.kept_as_found(exc):
                log.warning("task events off on this connection: %s", exc)
                self.enabled = False
                return None
        self._channel = self.connection.channel()
        return self._channel
