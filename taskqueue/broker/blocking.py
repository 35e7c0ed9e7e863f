"""Blocking pika connections, for ordinary (threaded, non-gevent) code: the Client,
the operator's tools (status, submit), tests and benchmarks.

The gevent half, amqp.Session, is what the supervisor's children use; this half
shares its connection parameters, broker route and failure wording (pikaparams.py),
and declares what plans.py plans with declarations.run, as the Session does.

No gevent, and nothing changed in pika on import: the Client of an application
uses this module. A message whose headers pika cannot decode ends the connection
here (pika's own decoders: fielddecode.py is installed only by the processes that
import amqp.py, the daemons and the tools); the Client says so (client.py).
"""
import builtins
import contextlib
import logging
import ssl
import time

import pika
from pika.adapters.utils.connection_workflow import AMQPConnectorException

from taskqueue.broker import declarations, pikaparams
from taskqueue.broker.pikaparams import REPLY_TIMEOUT
from taskqueue.errors import (BrokerUnreachable, PublishNacked, PublishRefused, SessionClosed,
                              TaskqueueError, TopologyError)
from taskqueue.protocol import delays, onehop, plans, priorities, topology
from taskqueue.protocol.topology import TASK_QUEUE, unroutable_onehop, worker_queue

#: What a blocking connect raises for a broker it cannot use: pika re-raises a
#: failed TLS handshake's ssl.SSLError itself, not wrapped in an AMQPError, and
#: the stack_timeout of a broker that accepts and never answers as its own
#: AMQPConnectorStackTimeout (pika 1.2 to 1.4), no AMQPError either.
CONNECT_FAILED = (pika.exceptions.AMQPError, ssl.SSLError, AMQPConnectorException)

log = logging.getLogger(__name__)


class _Channels:
    """declarations.run's channels on a BlockingConnection: channels of their own, so
    that a refusal closes none of the caller's. Any channel the broker closes is a
    refusal; one the plan does not explain raises pika's own error, as it would."""

    def __init__(self, connection):
        self.connection = connection

    def open(self):
        return self.connection.channel()

    def call(self, channel, declaration):
        method, args, kwargs = declarations.pika_call(channel, declaration)
        try:
            return method(*args, **kwargs)
        except pika.exceptions.ChannelClosedByBroker as exc:
            raise declarations.Refused(exc) from None

    def close(self, channel):
        if channel.is_open:
            channel.close()

    def explains(self, declaration, reason):
        return True

    def failure(self, declaration, reason):
        return reason


def declaring_channels(connection):
    """declarations.run's channels on a BlockingConnection (a refusal closes none of
    the caller's)."""
    return _Channels(connection)


def declare_plan(channel, plan):
    """Declare `plan` (plans.py) on the connection of a pika BlockingChannel, on channels
    of its own; TopologyError for a refusal the plan explains, pika's error otherwise."""
    declarations.run(plan, _Channels(channel.connection))


def settings_as_found(connection, settings):
    """`settings`, or the same with the queue type `taskqueue` exists as (a pool with
    another [amqp] queue_type declared it): what a publisher that uses the queues of
    the vhost as they are declares with (the Client), its declares then taken as
    every component's are (declarations.run). When no type is taken, `settings`:
    its own declare says what differs (explain_refusal)."""
    for candidate in topology.queue_type_choices(settings):
        try:
            declarations.run([plans.wanted_queue(TASK_QUEUE, candidate)], _Channels(connection))
        except TopologyError:
            continue
        if candidate is not settings:
            log.info("%s exists as a %s queue: used as it is", TASK_QUEUE, candidate.queue_type)
        return candidate
    return settings


def publish_delayed_blocking(channel, settings, worker_type, body, props, seconds, declare=True):
    """Publish a task for `worker_type` that reaches taskqueue after `seconds` (rounded
    up), on a pika BlockingChannel in confirm mode (blocking_channel gives one); declares
    the delay chain first unless told it is declared on this connection already
    (idempotent, but a few dozen round trips). ValueError for a delay out of range;
    TopologyError, TaskqueueError with a readable reason otherwise."""
    exchange, routing_key = delays.route(seconds)
    out = pikaparams.delayed_properties(props, worker_type, seconds)
    if declare:
        declare_delays_blocking(channel, settings)
    what = f"{worker_type} in {delays.whole_seconds(seconds)}s"
    try:
        channel.basic_publish(exchange, routing_key, body, out, mandatory=True)
    except pika.exceptions.UnroutableError as exc:
        raise TaskqueueError(f"broker returned the delayed task ({what}): exchange "
                             f"{exchange!r} routed it to no queue") from exc
    except pika.exceptions.NackError:
        raise PublishNacked(f"the delayed task ({what})") from None


def declare_delays_blocking(channel, settings):
    """Declare the delay chain (plans.delay_chain) on a pika BlockingChannel's connection;
    TopologyError when the broker refuses a queue of it."""
    declare_plan(channel, plans.delay_chain(settings))


def queue_counts(settings, queues, timeout=REPLY_TIMEOUT):
    """{queue: (messages ready, consumers)} from passive declares; None for a queue that
    does not exist. Declaring passively creates nothing and needs no management plugin,
    but tells no more: deliveries not yet acked are counted in neither number."""
    counts = {}
    with _blocking_channel(settings, timeout) as channel:
        for queue in queues:
            try:
                frame = channel.queue_declare(queue, passive=True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code != 404:
                    raise
                counts[queue] = None
                channel = channel.connection.channel()   # a 404 closed that one
                continue
            counts[queue] = (frame.method.message_count, frame.method.consumer_count)
    return counts


@contextlib.contextmanager
def blocking_channel(settings, timeout=REPLY_TIMEOUT):
    """A pika BlockingChannel in confirm mode on the first broker that answers, for
    ordinary (non-gevent) code; broker errors become TaskqueueError."""
    with _blocking_channel(settings, timeout) as channel:
        yield channel


@contextlib.contextmanager
def _blocking_channel(settings, timeout):
    """Once connected, everything done on the channel waits at most `timeout` seconds
    for the broker, all of it together (answered_within)."""
    connection = _blocking_connection(settings, None, timeout)
    try:
        with answered_within(connection, timeout, "asking the broker", settings):
            channel = connection.channel()
            channel.confirm_delivery()
            yield channel
    except pika.exceptions.AMQPError as exc:
        raise TaskqueueError(f"{pikaparams.describe(settings)}: {exc!r}") from exc
    finally:
        close_within(connection, timeout)


# -- a kept blocking connection, for taskqueue.client ----------------------------
# (It raises errors.PublishRefused and PublishNacked, the Client's and the Session's.)

def blocking_connect(settings, name, timeout=REPLY_TIMEOUT):
    """A BlockingConnection to the first broker of `settings` that answers; TaskqueueError
    naming each one tried otherwise. For ordinary (threaded) code: not thread-safe."""
    return _blocking_connection(settings, name, timeout)


def _blocking_connection(settings, name, timeout):
    """The first broker that answers, in this process's route (process_route), each
    given [amqp] connect_timeout; BrokerUnreachable naming each one tried otherwise.
    (`timeout` is for the waits after it: answered_within.)"""
    failures = []
    route = pikaparams.process_route()
    for params in pikaparams.ordered_parameters(settings, route):
        # No blocked_connection_timeout: answered_within bounds every wait, a
        # Connection.Blocked one included.
        if name is not None:
            params.client_properties = {"connection_name": name}
        try:
            connection = pika.BlockingConnection(params)
        except CONNECT_FAILED as exc:
            failures.append(pikaparams.failure(params, exc, settings))
            route.attempt_failed(pikaparams.address(params),
                                 pikaparams.short_failure(params, exc, settings),
                                 time.monotonic())
            continue
        route.connected(pikaparams.address(params), "")
        return connection
    raise BrokerUnreachable("cannot connect to the broker: " + "; ".join(failures))


#: What a blocking connection raises once it is gone (closed by the broker, the
#: network, a dead peer): the client reconnects on these.
CONNECTION_LOST = (pika.exceptions.AMQPConnectionError, pika.exceptions.ConnectionWrongStateError,
                   pika.exceptions.ChannelWrongStateError, pika.exceptions.ChannelClosed)


def undecodable(exc):
    """What pika failed to read (its error, in words), when `exc` (one of CONNECTION_LOST)
    is pika ending the connection because it could not decode what the broker sent: a
    message's headers nested too deep (RecursionError), a timestamp past 9999
    (ValueError)... None for a connection lost otherwise (the network: an OSError).
    pika words it "Stream connection lost: <its error's repr>", 1.2.0 to 1.4.x."""
    prefix = "Stream connection lost: "
    text = str(exc)
    if not (isinstance(exc, pika.exceptions.StreamLostError) and text.startswith(prefix)):
        return None
    cause = text[len(prefix):]
    kind = getattr(builtins, cause.split("(", 1)[0], None)
    if isinstance(kind, type) and issubclass(kind, Exception) and not issubclass(kind, OSError):
        return cause
    return None


# -- bounded waits ----------------------------------------------------------------

class _NoAnswer(pika.exceptions.AMQPConnectionError):
    """Why answered_within tore a connection down."""


@contextlib.contextmanager
def answered_within(connection, seconds, what, settings=None):
    """Let the body's blocking calls on `connection` (a BlockingConnection) wait at most
    `seconds` for the broker, all of them together; past that, tear the connection down
    and raise SessionClosed "`what`: no reply from <broker> in <seconds>s", the error
    the gevent Session raises for the same event (amqp.Session._wait).

    pika bounds none of these waits: its blocked_connection_timeout covers only the
    Connection.Blocked state, and a broker that stops answering (a hung node, a dead
    router) leaves a confirm, a declare, a channel open or a close waiting until
    heartbeats end the connection, if the broker proposed any. The timer is the one
    pika's blocked timeout uses, run by the I/O loop inside every wait; a
    BlockingConnection.call_later callback runs only in process_data_events, never
    while basic_publish waits for its confirm. Private to pika (_impl,
    _adapter_call_later, _terminate_stream), the same from 1.2.0 to 1.4.x: held by
    tests/integration/test_client.py and test_status.py, on each stack."""
    impl = connection._impl
    expired = []

    def expire():
        expired.append(True)
        if not impl.is_closed:
            impl._terminate_stream(_NoAnswer(f"no reply in {seconds:g}s"))
    timer = impl._adapter_call_later(seconds, expire)
    try:
        yield
    except Exception:
        if expired:
            broker = pikaparams.describe(settings) if settings else "the broker"
            raise SessionClosed(f"{what}: no reply from {broker} in {seconds:g}s") from None
        raise
    finally:
        if not expired:
            impl._adapter_remove_timeout(timer)


def close_within(connection, seconds):
    """Close `connection` if it is open, waiting at most `seconds` for the broker's
    close-ok; a broker that does not answer has its connection torn down. Never raises
    for the broker: what could be done about it?"""
    if connection is None or not connection.is_open:
        return
    try:
        with answered_within(connection, seconds, "close"):
            connection.close()
    except (TaskqueueError, pika.exceptions.AMQPError) as exc:
        log.debug("closing a blocking connection: %r", exc)


def blocking_declare(channel, settings, queue):
    """Declare `queue` as taskqueue wants it, on a blocking channel's connection;
    TopologyError if it exists with other arguments."""
    declare_plan(channel, [plans.wanted_queue(queue, settings)])


def blocking_publish_confirmed(channel, queue, body, props, exchange=""):
    """Publish (mandatory) on a blocking channel in confirm mode and return once the
    broker confirmed it; PublishRefused saying why it did not take it."""
    where = f"queue {queue!r}" if not exchange else f"exchange {exchange!r} ({queue!r})"
    try:
        channel.basic_publish(exchange, queue, body, props, mandatory=True)
    except pika.exceptions.UnroutableError:
        raise PublishRefused(f"the broker returned the message: no {where} took it "
                             f"(unroutable)") from None
    except pika.exceptions.NackError:
        raise PublishNacked(f"the message for {where}") from None


# -- one hop (onehop.py), for blocking clients ----------------------------------

def declare_onehop_blocking(channel, settings):
    """Declare, on a pika BlockingChannel's connection, what a one-hop publish needs: the
    exchanges, `taskqueue` (as every component declares it) and its binding to the
    alternate exchange. TopologyError naming what the broker refused."""
    declare_plan(channel, plans.one_hop(task_queue=True, settings=settings))


def declare_onehop_exchanges_blocking(channel, worker_queues=()):
    """Declare the one-hop exchanges on a BlockingChannel's connection and bind each
    (queue, worker_type) of `worker_queues` to the direct one; TopologyError on a refusal."""
    declare_plan(channel, plans.one_hop(worker_queues=worker_queues))


def blocking_publish_onehop(channel, worker_type, body, props):
    """Publish a one-hop task (mandatory) on a blocking channel in confirm mode; return
    once the broker confirmed it is in a queue (worker_<type>, or taskqueue through the
    alternate exchange). PublishRefused saying why not. The routing key is the type's,
    or its high queue's for a task of high priority (priorities.routing_key)."""
    try:
        channel.basic_publish(onehop.EXCHANGE, priorities.routing_key(worker_type, props.priority),
                              body, props, mandatory=True)
    except pika.exceptions.UnroutableError:
        raise PublishRefused(unroutable_onehop(worker_type)) from None
    except pika.exceptions.NackError:
        raise PublishNacked(f"the task for {worker_type} (into {worker_queue(worker_type)} "
                            f"or {TASK_QUEUE})") from None


# -- many confirms in flight, for confirms.ConfirmWindow (the Client's submit_many) --

#: Longest slice of waiting on the connection while confirms are due (seconds).
CONFIRM_POLL = 0.005


class ConfirmingChannel:
    """A channel of a BlockingConnection whose confirms come as callbacks, as a gevent
    Session's do: the session confirms.ConfirmWindow needs, without gevent. pika's
    BlockingChannel waits for each confirm inside basic_publish (a round trip per
    message); this drives the asynchronous channel under it (`_impl`, private to pika,
    the same from 1.2.0 to 1.4.x, as answered_within's) and waits in the connection's
    own loop, process_data_events. For one thread, as the connection is."""

    def __init__(self, connection):
        self._connection = connection
        self._channel = connection.channel()._impl
        self._channel.add_on_close_callback(self._on_closed)
        self._confirmed = False
        self.close_reason = None

    @property
    def is_open(self):
        return self.close_reason is None and self._channel.is_open

    def _on_closed(self, channel, reason):
        self.close_reason = self.close_reason or reason

    def enable_confirms(self, on_confirm, on_return):
        def confirmed(frame):
            self._confirmed = True
            on_confirm(frame)
        self._channel.add_on_return_callback(
            lambda channel, method, props, body: on_return(method.routing_key, props, body))
        ok = []
        self._channel.confirm_delivery(confirmed, callback=ok.append)
        deadline = time.monotonic() + REPLY_TIMEOUT
        while not ok and self.is_open and time.monotonic() < deadline:
            self._serve(deadline)
        if not ok:
            raise SessionClosed(f"confirm mode: {self.close_reason or 'no reply'!r}")

    def publish(self, routing_key, body, props, exchange="", mandatory=False):
        self._channel.basic_publish(exchange, routing_key, body, props, mandatory=mandatory)

    def await_confirm(self, timeout):
        """Serve the connection until a confirm came, the channel closed, or `timeout`."""
        self._confirmed = False
        deadline = time.monotonic() + timeout
        while not self._confirmed and self.is_open and time.monotonic() < deadline:
            self._serve(deadline)

    def _serve(self, deadline):
        try:
            self._connection.process_data_events(
                time_limit=max(0, min(CONFIRM_POLL, deadline - time.monotonic())))
        except CONNECTION_LOST as exc:
            self.close_reason = self.close_reason or exc

    def abort(self):
        """Give up on this connection (a bug in a callback)."""
        self.close_reason = self.close_reason or "aborted after an internal error"
        close_within(self._connection, 1.0)
