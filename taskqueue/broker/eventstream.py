"""Reading the task events stream (protocol/events.py) on a blocking connection, for
`taskqueue task` and `taskqueue events`: from a point in time on, until the
stream's end as it was when reading began (or on and on: `follow`).

A stream consumer over AMQP 0-9-1 needs a prefetch (basic.qos) and acks, and
it is told where to attach by the consumer argument `x-stream-offset`; a
datetime goes as an AMQP timestamp, and RabbitMQ attaches at the chunk that
holds that time in *its* clock (when it wrote the chunk), whole seconds:
events before the start come too, and are dropped here by their `at`.

A stream has no end a consumer is told of: reading stops at the first of
- a message whose batch was stamped (its `timestamp` property, whole seconds)
  more than REACHED_MARGIN after reading began: the stream holds messages in
  the order the broker took them, so everything written before the start has
  come. A stamp more than FORGED_FUTURE ahead ends nothing: a clock gone
  wrong, or a publisher's forgery, must not cut every later lookup short;
- IDLE seconds without a delivery: the end of what was written (a quiet
  stream ends so);
- the caller's deadline.

Whoever may publish to the vhost may write anything into the stream:
events.decode bounds and types what is taken, and what is no event is
counted (`malformed_events`, in `malformed_messages`), never shown raw.
"""
import datetime
import json
import time

import pika

from taskqueue.broker import blocking, pikaparams
from taskqueue.errors import NoEventStream, TaskqueueError
from taskqueue.protocol import events

#: Seconds without a delivery after which the stream's end is taken as reached. The
#: broker sends chunks back to back while the consumer has credit (a few ms apart,
#: read from disk on a loaded machine); writers flush every events.FLUSH seconds, so
#: a batch on its way as reading began comes within this too.
IDLE = 0.3
#: Messages delivered before an ack (each a batch of up to events.BATCH events, about
#: 100 KB at most); acked in halves, as multiple acks, so that credit never runs dry.
PREFETCH = 64
#: A batch stamped this long after reading began ends the read: its writer's clock may
#: run this far ahead of the reader's; and so far ahead at most (FORGED_FUTURE).
REACHED_MARGIN = 1.0
FORGED_FUTURE = 3600.0


class EventReader:
    """The events stream `stream` of the broker of `settings`, read from `start`
    (seconds since the epoch). A context manager; `events()` yields the events."""

    def __init__(self, settings, start, stream=events.STREAM, name="taskqueue events",
                 timeout=pikaparams.REPLY_TIMEOUT):
        self.settings = settings
        self.start = start
        self.stream = stream
        self.name = name
        self.timeout = timeout
        self.malformed_events = 0       # events (or whole messages) that were none
        self.malformed_messages = 0     # messages holding at least one of them
        self.messages = 0               # messages delivered
        self.stopped_by = None          # "reached", "idle", "deadline", "asked" once done
        self._connection = None
        self._channel = None

    def __enter__(self):
        self._connection = blocking.blocking_connect(self.settings, self.name, self.timeout)
        try:
            with blocking.answered_within(self._connection, self.timeout,
                                          f"reading {self.stream}", self.settings):
                self._channel = self._attach()
        except BaseException:
            blocking.close_within(self._connection, self.timeout)
            raise
        return self

    def __exit__(self, *exc_info):
        blocking.close_within(self._connection, self.timeout)

    def _attach(self):
        channel = self._connection.channel()
        try:
            channel.queue_declare(self.stream, passive=True)     # creates nothing
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                raise NoEventStream(no_stream_text(self.stream, self.settings)) from None
            raise TaskqueueError(f"{pikaparams.describe(self.settings)}: {self.stream}: "
                                 f"{exc.reply_text}") from None
        channel.basic_qos(prefetch_count=PREFETCH)
        return channel

    def events(self, follow=False, deadline=None, stop_asked=lambda: False, mentions=None):
        """Each event stamped at or after `start`, in the stream's order. `follow`: go on
        until stop_asked() (checked at least every IDLE seconds) instead of stopping
        at the end; `deadline`: a time.monotonic() past which reading stops. `mentions`:
        only messages whose body holds these bytes are decoded (a task id as
        events.encode writes it: mentioning()); the others cost a substring search."""
        began = time.time()
        # Whole seconds, not before 1970 (an AMQP timestamp is unsigned): a task id may
        # claim any time.
        offset = datetime.datetime.fromtimestamp(max(0, int(self.start)), datetime.timezone.utc)
        unacked = None
        try:
            for method, props, body in self._channel.consume(
                    self.stream, arguments={"x-stream-offset": offset},
                    inactivity_timeout=IDLE):
                if stop_asked():
                    self.stopped_by = "asked"
                    break
                if method is None:
                    if not follow:
                        self.stopped_by = "idle"
                        break
                    continue
                self.messages += 1
                unacked = method.delivery_tag
                if self.messages % (PREFETCH // 2) == 0:
                    self._channel.basic_ack(unacked, multiple=True)
                    unacked = None
                if mentions is None or mentions in body:
                    yield from self._taken(body)
                if not follow and reached(props.timestamp, began):
                    self.stopped_by = "reached"
                    break
                if deadline is not None and time.monotonic() > deadline:
                    self.stopped_by = "deadline"
                    break
            self._detach()
        except pika.exceptions.AMQPError as exc:
            raise TaskqueueError(f"reading {self.stream} on "
                                 f"{pikaparams.describe(self.settings)}: {exc!r}") from None

    def _taken(self, body):
        found, problems = events.decode(body)
        if problems:
            self.malformed_events += problems
            self.malformed_messages += 1
        return [event for event in found if event["at"] >= self.start]


    def _detach(self):
        """Leave the stream without giving anything back: pika's cancel (and its channel
        close) rejects the deliveries it holds, and a stream answers a reject by
        closing the whole connection (540 NOT_IMPLEMENTED). Closing the channel
        underneath pika's blocking wrapper ends the consumer; a stream keeps no
        unacked state to give back. pika's _impl, as blocking.answered_within uses it."""
        impl = self._channel._impl
        if impl.is_open:
            impl.close()
            self._connection.process_data_events(time_limit=0)


def reached(stamp, began):
    """Whether a batch stamped `stamp` (its timestamp property: whole seconds, or None)
    says the reader that began at `began` has read all that was written before."""
    if not isinstance(stamp, int) or isinstance(stamp, bool):
        return False
    return began + REACHED_MARGIN < stamp < began + FORGED_FUTURE


def mentioning(task_id):
    """The bytes every batch that holds an event of `task_id` holds, as events.encode
    writes it; None when its JSON could be written otherwise (escapes): then every
    message is decoded."""
    text = json.dumps(task_id)
    if text != json.dumps(task_id, ensure_ascii=False) or "\\" in text or "/" in text:
        return None
    return text.encode()


def no_stream_text(stream, settings):
    return (f"no events stream {stream} on {pikaparams.describe(settings)}: events are off "
            "([amqp] events) or nothing has written one yet")
