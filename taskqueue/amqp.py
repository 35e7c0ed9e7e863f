"""The only module that imports pika: parameters, topology, one session.

A `Session` is one connection with one channel, driven by the gevent hub.
Its blocking-style methods (`open`, `declare_queue`, `consume`, ...) are
called from a greenlet and wait cooperatively for the broker's reply; pika
callbacks run in the hub and must never block or raise (an exception in a
callback closes the whole connection: shared/notes/debian-gevent-pika.md §1.4).

Importing this module in the supervisor, before any fork, is intended: the
import costs ~40 ms, which a restarted child then does not pay.
"""
import contextlib
import decimal
import encodings.idna  # noqa: F401  getaddrinfo loads it lazily, which fails after a privilege drop
import logging
import time

import gevent
from gevent.event import AsyncResult, Event
import pika
from pika.adapters.gevent_connection import GeventConnection

from .errors import TaskqueueError

log = logging.getLogger(__name__)

#: The queue clients submit envelopes to; the dispatcher consumes it.
TASK_QUEUE = "taskqueue"
#: Where everything that cannot be processed ends up, with headers saying why.
DEAD_QUEUE = "taskqueue_dead"
#: Seconds to wait for a broker reply (open, declare, consume, close).
REPLY_TIMEOUT = 30.0
#: Persistent messages survive a broker restart (pika 1.2 has no pika.DeliveryMode).
PERSISTENT = 2


class SessionClosed(TaskqueueError):
    """The connection or channel closed; the session cannot be used any more."""


def worker_queue(worker_type):
    return f"worker_{worker_type}"


def parameters(settings):
    """pika connection parameters for an AmqpSettings."""
    if settings.url:
        params = pika.URLParameters(settings.url)
    else:
        params = pika.ConnectionParameters(
            host=settings.host, port=settings.port, virtual_host=settings.vhost,
            credentials=pika.PlainCredentials(settings.user, settings.password))
    if settings.heartbeat is not None:
        params.heartbeat = settings.heartbeat
    return params


def describe(settings):
    """Where we connect, for log lines; never includes the password."""
    if settings.url:
        params = pika.URLParameters(settings.url)
        return f"{params.host}:{params.port} vhost {params.virtual_host!r}"
    return f"{settings.host}:{settings.port} vhost {settings.vhost!r}"


def queue_arguments(queue):
    """The arguments every component declares `queue` with: one place, so they never differ.

    Every queue but the dead-letter queue itself dead-letters into it: a task
    rejected without requeue lands there with the broker's x-death header.
    """
    if queue == DEAD_QUEUE:
        return {}
    return {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": DEAD_QUEUE}


def amqp_safe(value):
    """Return `value` with what pika cannot encode converted.

    Headers received from other clients may hold floats, which pika decodes
    but refuses to encode again; forwarding them would close the connection.
    A float becomes a Decimal where pika's AMQP decimal (a 32-bit scaled
    integer) can hold it, else its repr() string (timestamps, nan, 1e20).
    """
    if isinstance(value, float):
        return _float_field(value)
    if isinstance(value, dict):
        return {k: amqp_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [amqp_safe(v) for v in value]
    return value


def _float_field(value):
    number = decimal.Decimal(repr(value))
    if number.is_finite():
        number = number.normalize()
        places = max(0, -number.as_tuple().exponent)
        if places <= 255 and -2**31 <= int(number.scaleb(places)) < 2**31:
            return number
    return repr(value)


def properties(**kwargs):
    return pika.BasicProperties(**kwargs)


class Session:
    """One AMQP connection and one channel, owned by the current process."""

    def __init__(self, settings, name):
        self.settings = settings
        self.name = name            # shown in the broker's connection list
        self.closed = Event()       # set once connection or channel is gone
        self.close_reason = None
        self._connection = None
        self._channel = None

    # -- opening and closing -------------------------------------------------

    def open(self, timeout=REPLY_TIMEOUT):
        params = parameters(self.settings)
        params.client_properties = {"connection_name": self.name}
        opened = AsyncResult()
        self._connection = GeventConnection(
            params,
            on_open_callback=lambda conn: opened.set(conn),
            on_open_error_callback=lambda conn, exc: opened.set_exception(
                SessionClosed(f"cannot connect to {describe(self.settings)}: {exc!r}")),
            on_close_callback=self._on_connection_closed)
        self._wait(opened, timeout, "connection open")
        channel = AsyncResult()
        self._connection.channel(on_open_callback=channel.set)
        self._channel = self._wait(channel, timeout, "channel open")
        self._channel.add_on_close_callback(self._on_channel_closed)
        return self

    def close(self, timeout=REPLY_TIMEOUT):
        """Close cleanly (the broker requeues unacked deliveries); wait for it."""
        if self._connection is None or self.closed.is_set():
            return
        if self._connection.is_open:
            self._connection.close()
        self.closed.wait(timeout)

    def _on_connection_closed(self, connection, reason):
        self._mark_closed(reason)

    def _on_channel_closed(self, channel, reason):
        self._mark_closed(reason)
        # A channel closed by the broker (e.g. PRECONDITION_FAILED) leaves the
        # connection useless to us: close it so the process can start over.
        if self._connection.is_open:
            self._connection.close()

    def _mark_closed(self, reason):
        if self.close_reason is None:
            self.close_reason = reason
        self.closed.set()

    @property
    def is_open(self):
        return not self.closed.is_set()

    # -- waiting for replies (called from a greenlet, never from a callback) --

    def _wait(self, result, timeout, what):
        gevent.wait([result, self.closed], count=1, timeout=timeout)
        if result.ready():
            return result.get()
        if self.closed.is_set():
            raise SessionClosed(f"{what} failed: {self.close_reason!r}")
        raise SessionClosed(f"{what}: no reply from {describe(self.settings)} in {timeout:g}s")

    def _call(self, method, *args, **kwargs):
        if self.closed.is_set():
            raise SessionClosed(f"{method.__name__}: session closed: {self.close_reason!r}")
        reply = AsyncResult()
        method(*args, callback=reply.set, **kwargs)
        return self._wait(reply, REPLY_TIMEOUT, method.__name__)

    # -- topology and consuming ----------------------------------------------

    def declare_queue(self, queue, passive=False):
        """Declare a durable queue; return (message_count, consumer_count)."""
        frame = self._call(self._channel.queue_declare, queue, passive=passive, durable=True,
                           arguments=None if passive else queue_arguments(queue))
        return frame.method.message_count, frame.method.consumer_count

    def declare_queue_nowait(self, queue):
        """Declare without waiting: frames on one channel are processed in order,
        so a publish sent right after it finds the queue."""
        self._channel.queue_declare(queue, durable=True, arguments=queue_arguments(queue))

    def qos(self, prefetch):
        self._call(self._channel.basic_qos, prefetch_count=prefetch)

    def consume(self, queue, on_message):
        """Start consuming; on_message(method, properties, body) runs in the hub."""
        ok = AsyncResult()
        tag = self._channel.basic_consume(
            queue, lambda ch, method, props, body: on_message(method, props, body),
            callback=ok.set)
        self._wait(ok, REPLY_TIMEOUT, f"consume {queue}")
        return tag

    def cancel(self, consumer_tag):
        """Stop deliveries; those already received stay ours to settle."""
        if self.is_open:
            self._call(self._channel.basic_cancel, consumer_tag)

    def enable_confirms(self, on_confirm):
        """Publisher confirms; on_confirm(frame) gets each Basic.Ack/Nack in the hub."""
        ok = AsyncResult()
        self._channel.confirm_delivery(on_confirm, callback=ok.set)
        self._wait(ok, REPLY_TIMEOUT, "confirm mode")

    # -- per-message operations (hub context, non-blocking) -----------------

    def publish(self, routing_key, body, props, exchange="", mandatory=False):
        self._channel.basic_publish(exchange, routing_key, body, props, mandatory=mandatory)

    def ack(self, delivery_tag, multiple=False):
        self._channel.basic_ack(delivery_tag, multiple=multiple)

    def nack(self, delivery_tag, multiple=False, requeue=True):
        self._channel.basic_nack(delivery_tag, multiple=multiple, requeue=requeue)

    def reject(self, delivery_tag, requeue=True):
        self._channel.basic_reject(delivery_tag, requeue=requeue)

    @property
    def channel(self):
        return self._channel

    @property
    def connection(self):
        return self._connection


#: RabbitMQ's direct reply-to pseudo-queue: replies without declaring a queue.
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"


def blocking_publish(settings, queue, body, props, timeout=REPLY_TIMEOUT):
    """Publish one message with a confirm from ordinary (non-gevent) code.

    Used by the command line; raises TaskqueueError with a readable reason.
    """
    with _blocking_channel(settings, timeout) as channel:
        _confirmed_publish(channel, queue, body, props)


def blocking_call(settings, queue, body, props, timeout):
    """Publish with reply_to set to direct reply-to; return the reply's body, or None on timeout."""
    replies = []
    with _blocking_channel(settings, timeout) as channel:
        # Consuming the pseudo-queue (no-ack) before publishing is what direct reply-to requires.
        channel.basic_consume(DIRECT_REPLY_TO, lambda ch, m, p, b: replies.append(b), auto_ack=True)
        props.reply_to = DIRECT_REPLY_TO
        _confirmed_publish(channel, queue, body, props)
        deadline = time.monotonic() + timeout
        while not replies and time.monotonic() < deadline:
            channel.connection.process_data_events(time_limit=min(1.0, deadline - time.monotonic()))
    return replies[0] if replies else None


@contextlib.contextmanager
def _blocking_channel(settings, timeout):
    params = parameters(settings)
    params.blocked_connection_timeout = timeout
    try:
        connection = pika.BlockingConnection(params)
    except pika.exceptions.AMQPError as exc:
        raise TaskqueueError(f"cannot connect to {describe(settings)}: {exc!r}") from exc
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        yield channel
    except pika.exceptions.AMQPError as exc:
        raise TaskqueueError(f"{describe(settings)}: {exc!r}") from exc
    finally:
        if connection.is_open:
            connection.close()


def _confirmed_publish(channel, queue, body, props):
    channel.queue_declare(queue, durable=True, arguments=queue_arguments(queue))
    try:
        channel.basic_publish("", queue, body, props, mandatory=True)
    except pika.exceptions.UnroutableError as exc:
        raise TaskqueueError(f"broker returned the message: queue {queue!r} did not take it") from exc
    except pika.exceptions.NackError as exc:
        raise TaskqueueError(f"broker refused the message (nack) for queue {queue!r}") from exc
