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
import ssl
import time
import urllib.parse

import gevent
from gevent.event import AsyncResult, Event
import pika
from pika.adapters.gevent_connection import GeventConnection
from pika.adapters.utils.connection_workflow import AMQPConnectorException

from . import brokers, delays, nacks, onehop, promptwrite, sendbatch, tls
from .errors import TaskqueueError, TopologyError

log = logging.getLogger(__name__)
sendbatch.install()

#: The queue clients submit envelopes to; the dispatcher consumes it.
TASK_QUEUE = "taskqueue"
#: Where everything that cannot be processed ends up, with headers saying why.
DEAD_QUEUE = "taskqueue_dead"
#: Seconds to wait for a broker reply (open, declare, consume, close).
REPLY_TIMEOUT = 30.0
#: The broker's delivery limit, in units of [amqp] delivery_limit (see queue_arguments).
BROKER_LIMIT_FACTOR = 4
#: The delivery limit of taskqueue_dead (a quorum queue): none worth the name. It
#: must be explicit: RabbitMQ 4 gives a quorum queue declared without one a limit
#: of 20, and taskqueue_dead has nowhere to dead-letter to, so a dead letter
#: handed back 20 times (20 runs of `taskqueue dead list`) would be dropped.
#: (-1, RabbitMQ 4's "unlimited", drops at the first return on RabbitMQ 3.)
DEAD_QUEUE_DELIVERY_LIMIT = 10**9
#: Persistent messages survive a broker restart (pika 1.2 has no pika.DeliveryMode).
PERSISTENT = 2


class SessionClosed(TaskqueueError):
    """The connection or channel closed; the session cannot be used any more."""


class BrokerUnreachable(SessionClosed):
    """No broker of the list could be connected to (refused, TLS, login): the tools
    exit with startup.EXIT_NO_BROKER."""


_process_route = None


def process_route():
    """The route of this process's sessions and blocking connections, when the caller
    gives none (tools, clients): a random first broker, and what failed lately."""
    global _process_route
    if _process_route is None:
        _process_route = brokers.random_route()
    return _process_route


def worker_queue(worker_type):
    return f"worker_{worker_type}"


def parameters(settings):
    """pika connection parameters for each broker of an AmqpSettings, in config order."""
    if settings.url:
        candidates = [pika.URLParameters(url) for url in settings.hosts]
        own_timeouts = [_url_timeouts(url) for url in settings.hosts]
    else:
        credentials = pika.PlainCredentials(settings.user, settings.password)
        candidates = [pika.ConnectionParameters(host=host, port=settings.port,
                                                virtual_host=settings.vhost,
                                                credentials=credentials)
                      for host in settings.hosts]
        own_timeouts = [()] * len(candidates)
    for params, own in zip(candidates, own_timeouts):
        if settings.heartbeat is not None:
            params.heartbeat = settings.heartbeat
        # A host that drops packets never refuses: without these a dead node costs
        # pika's defaults (10 s to connect, 15 s for the whole handshake) per attempt.
        # (socket_timeout and stack_timeout: both in pika 1.2.0 and 1.3.2.)
        for name in ("socket_timeout", "stack_timeout"):
            if name not in own:   # a URL's own ?socket_timeout= wins
                setattr(params, name, settings.connect_timeout)
        if settings.tls and (not settings.url or params.ssl_options is not None):   # amqps:// only
            # The context kept since the config was loaded (still privileged): never pika's own.
            context = tls.context(settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file)
            params.ssl_options = pika.SSLOptions(context, settings.tls_server_name or params.host)
        if settings.auth == "external":
            params.credentials = pika.credentials.ExternalCredentials()
    return candidates


def _url_timeouts(url):
    """The connect timeouts a URL sets itself (?socket_timeout=...)."""
    return {key for key in urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
            if key in ("socket_timeout", "stack_timeout")}


def address(params):
    """`host:port` of one broker's parameters: how logs, reports and status name it."""
    return brokers.address(params.host, params.port)


def ordered_parameters(settings, route, now=None):
    """parameters(settings) in the order `route` (brokers.Route) tries them."""
    candidates = parameters(settings)
    now = time.monotonic() if now is None else now
    return [candidates[i] for i in route.order([address(p) for p in candidates], now)]


#: pika's own ERROR lines for one failed connection attempt: seven of them, each
#: repeating the same error; failure() says it once, naming the file at fault.
PIKA_ATTEMPT_LINES = ("Attempt to create the streaming transport failed", "AMQPConnector - reporting failure",
                      "AMQP connection workflow failed", "AMQPConnectionWorkflow - reporting failure",
                      "Full-stack connection workflow failed", "Self-initiated stack bring-up failed",
                      "SSL do_handshake failed")


class _OneLinePerAttempt(logging.Filter):
    """Drops pika's lines for a failed connection attempt: taskqueue logs one in their place.
    In any program that imports taskqueue (an application's Client too); at debug
    they show (logs.py quiets the rest of pika's connection lines in our own processes)."""

    def filter(self, record):
        if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
            return True
        return not (isinstance(record.msg, str) and record.msg.startswith(PIKA_ATTEMPT_LINES))


for _name in ("pika.adapters.utils.connection_workflow", "pika.adapters.base_connection",
              "pika.adapters.utils.io_services_utils"):
    logging.getLogger(_name).addFilter(_OneLinePerAttempt())


#: What a blocking connect raises for a broker it cannot use: pika re-raises a
#: failed TLS handshake's ssl.SSLError itself, not wrapped in an AMQPError, and
#: the stack_timeout of a broker that accepts and never answers as its own
#: AMQPConnectorStackTimeout (pika 1.2 to 1.4), no AMQPError either.
CONNECT_FAILED = (pika.exceptions.AMQPError, ssl.SSLError, AMQPConnectorException)


def failure(params, exc, settings):
    """One broker's connection failure in words: a TLS one names the file or name at fault."""
    return f"{params.host}:{params.port}: {tls.explain(exc, settings, params.host) or repr(exc)}"


def short_failure(params, exc, settings):
    """The same in a few words, for status and the supervisor's memory of failures."""
    return tls.explain(exc, settings, params.host) or brokers.reason(exc)


def copy_properties(props):
    """A shallow copy of message properties: copy.copy's generic protocol costs
    the dispatcher more than routing the message does."""
    out = props.__class__.__new__(props.__class__)
    out.__dict__.update(props.__dict__)
    return out


def describe(settings):
    """Where we connect, for log lines; never includes the password."""
    return ", ".join(f"{p.host}:{p.port} vhost {p.virtual_host!r}" for p in parameters(settings))


def queue_arguments(queue, settings):
    """The arguments every component declares `queue` with: one place, so they never differ.

    Every queue but the dead-letter queue itself dead-letters into it: a task
    rejected without requeue lands there with the broker's x-death header.
    A task that killed `delivery_limit` worker processes is dead-lettered by
    the worker that receives it next, with headers saying how they died
    (deadletter.Graveyard). Quorum queues count deliveries too, but RabbitMQ
    3 counts every return (a graceful stop, a recycle, a nack) as one: the
    broker's limit is BROKER_LIMIT_FACTOR times higher, a backstop for what no
    supervisor saw (deaths spread over hosts), with at-least-once dead-lettering.
    """
    args = {}
    if settings.queue_type == "quorum":
        # A classic queue is declared without x-queue-type, as every client does by default.
        args["x-queue-type"] = "quorum"
        # A new queue's leader goes to the node with the fewest leaders, not to the
        # node the declaring process happens to be connected to (RabbitMQ >= 3.10).
        # Queues declared without it are used as they are (legacy_arguments).
        args[LEADER_LOCATOR] = "balanced"
    if queue == DEAD_QUEUE:
        if settings.queue_type == "quorum":
            args["x-delivery-limit"] = DEAD_QUEUE_DELIVERY_LIMIT
        return args
    args.update({"x-dead-letter-exchange": "", "x-dead-letter-routing-key": DEAD_QUEUE})
    if settings.queue_type == "quorum":
        args.update({"x-delivery-limit": settings.delivery_limit * BROKER_LIMIT_FACTOR,
                     "x-dead-letter-strategy": "at-least-once",
                     "x-overflow": "reject-publish"})   # at-least-once requires it
    return args


#: The argument that places a quorum queue's leader (RabbitMQ >= 3.10).
LEADER_LOCATOR = "x-queue-leader-locator"


def legacy_arguments(queue, arguments, reason):
    """`arguments` without the one the broker's refusal `reason` names, when that is
    an argument taskqueue added later, and the queue exists without it (an older
    taskqueue declared it) or the broker does not know it: such a queue is used as
    it is rather than stopping everything. None for any other refusal.

    The broker compares x-queue-leader-locator as it compares every argument of
    its queue type: a queue declared without it refuses a declare with it.
    taskqueue_dead without a delivery limit is used with a warning (LEGACY_DEAD_QUEUE).
    """
    text = getattr(reason, "reply_text", "") or ""
    tolerated = {LEADER_LOCATOR} | ({"x-delivery-limit"} if queue == DEAD_QUEUE else set())
    for name in tolerated & set(arguments):
        if (f"inequivalent arg '{name}'" in text and "current is none" in text) or \
                (name == LEADER_LOCATOR and f"invalid arg '{name}'" in text):
            return {key: value for key, value in arguments.items() if key != name}
    return None


def blocking_arguments(connection, queue, arguments):
    """The arguments to declare `queue` with on a pika BlockingConnection: `arguments`,
    or fewer where legacy_arguments allows; tried on channels of their own, which a
    refusal closes (the caller's stays open). A refusal of another kind is left to
    the caller's own declare, which explains it."""
    while True:
        probe = connection.channel()
        try:
            probe.queue_declare(queue, durable=True, arguments=arguments)
        except pika.exceptions.ChannelClosedByBroker as exc:
            older = legacy_arguments(queue, arguments, exc)
            if older is None:
                return arguments
            arguments = older
            continue
        probe.close()
        return arguments


def _note_legacy(queue, arguments, older):
    """Say what a queue declared otherwise costs, once per declare that meets it."""
    if "x-delivery-limit" in arguments and "x-delivery-limit" not in older:
        log.warning("%s", LEGACY_DEAD_QUEUE)
    else:
        log.debug("queue %r exists without %s (an older taskqueue declared it, or the broker "
                  "is older than 3.10): its leader stays where it is", queue, LEADER_LOCATOR)


#: What an operator reads when taskqueue_dead is an older taskqueue's.
LEGACY_DEAD_QUEUE = (
    f"{DEAD_QUEUE} was declared by an older taskqueue, without a delivery limit: on "
    "RabbitMQ 4 the broker then gives it a limit of 20, and a dead letter handed back 20 "
    "times (by `taskqueue dead list`, say) is dropped. Give it one with a policy, "
    f"`rabbitmqctl set_policy -p VHOST taskqueue-dead '^{DEAD_QUEUE}$' "
    f"'{{\"delivery-limit\": {DEAD_QUEUE_DELIVERY_LIMIT}}}' --apply-to queues`, "
    f"or recreate it when it is empty (rabbitmqctl delete_queue {DEAD_QUEUE})")


def explain_refusal(queue, settings, reason):
    """A broker's refusal to declare `queue`, as a sentence an operator can act on."""
    text = getattr(reason, "reply_text", None) or repr(reason)
    if getattr(reason, "reply_code", None) == 406:
        return (f"queue {queue!r} already exists with other arguments than taskqueue declares "
                f"({text}); taskqueue wants {queue_arguments(queue, settings)}. Set [amqp] "
                f"queue_type / delivery_limit to match the existing queue, or drain it and delete "
                f"it (rabbitmqctl delete_queue {queue}) so that it is declared anew")
    return f"queue {queue!r} cannot be declared: {text}"


def delayed_properties(props, worker_type, seconds, now=None):
    """A copy of `props` (or new ones) for a delayed task: persistent (it must survive a
    broker restart while it waits), with the `worker_type` header the dispatcher routes
    it by and delays.DELAYED_HEADER, when it is due."""
    out = copy_properties(props) if props is not None else pika.BasicProperties()
    out.delivery_mode = PERSISTENT
    out.headers = dict(out.headers or {})
    out.headers["worker_type"] = worker_type
    out.headers[delays.DELAYED_HEADER] = delays.due(seconds, now)
    return out


def explain_delay_refusal(queue, arguments, reason):
    """A broker's refusal to declare a queue of the delay chain, as a sentence."""
    text = getattr(reason, "reply_text", None) or repr(reason)
    return (f"queue {queue!r} of the delay chain already exists with other arguments ({text}); "
            f"taskqueue wants {arguments}. Set [amqp] queue_type to match it, or, when no "
            f"delayed task waits in it, delete it (rabbitmqctl delete_queue {queue}) so that "
            f"it is declared anew")


def amqp_safe(value):
    """Return `value` with what pika cannot encode converted.

    Headers received from other clients may hold floats, which pika decodes
    but refuses to encode again; forwarding them would close the connection.
    A float becomes a Decimal where pika's AMQP decimal (a 32-bit scaled
    integer) can hold it, else its repr() string (timestamps, nan, 1e20).
    """
    if isinstance(value, float):
        return _float_field(value)
    if isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**63:
        return str(value)  # pika decodes huge doubles as ints it cannot encode again
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

    def __init__(self, settings, name, route=None):
        self.settings = settings
        self.name = name            # shown in the broker's connection list
        #: brokers.Route: which broker to try first, whom to tell (a child's supervisor)
        self.route = route or process_route()
        self.address = None         # "host:port" of the broker once open
        self.server = ""            # what that broker says of itself (brokers.server_summary)
        self.closed = Event()       # set once connection or channel is gone
        self.close_reason = None
        self._connection = None
        self._channel = None
        self._confirm_channel = None    # for publish_confirmed and publish_delayed
        self._confirmed = None
        self._confirm_reply = None      # a declare on the confirm channel, awaited
        self._confirm_close_reason = None
        self._delays_declared = False

    # -- opening and closing -------------------------------------------------

    def open(self, timeout=REPLY_TIMEOUT):
        """Connect to the first broker that answers, in the route's order, and open a
        channel. Each broker gets [amqp] connect_timeout (pika's own timeouts, and
        this wait a second longer as a backstop) before the next is tried."""
        failures = []
        wait = self.settings.connect_timeout + 1.0
        for params in ordered_parameters(self.settings, self.route):
            params.client_properties = {"connection_name": self.name}
            self.closed.clear()
            self.close_reason = None
            opened = AsyncResult()
            self._connection = GeventConnection(
                params,
                on_open_callback=opened.set,
                on_open_error_callback=lambda conn, exc, opened=opened: opened.set_exception(
                    self._attempt_failed(conn.params, exc)),
                on_close_callback=self._on_connection_closed)
            try:
                opened.get(timeout=wait)
                break
            except (SessionClosed, gevent.Timeout) as exc:
                short = getattr(exc, "short", None) or f"no answer in {wait:g}s"
                failures.append(str(exc) if isinstance(exc, SessionClosed)
                                else f"{address(params)}: {short}")
                self.route.attempt_failed(address(params), short, time.monotonic())
                self._give_up_connecting()
        else:
            raise BrokerUnreachable("cannot connect to the broker: " + "; ".join(failures))
        self.address = address(self._connection.params)
        self.server = brokers.server_summary(getattr(self._connection, "server_properties", None))
        self.route.connected(self.address, self.server)
        log.debug("connected to %s (%s)", self.address, self.server or "no server properties")
        channel = AsyncResult()
        self._connection.channel(on_open_callback=channel.set)
        self._channel = self._wait(channel, timeout, "channel open")
        self._channel.add_on_close_callback(self._on_channel_closed)
        self._channel.add_on_cancel_callback(self._on_consumer_cancelled)
        return self

    def _attempt_failed(self, params, exc):
        """What opening says of pika's `exc` (in the hub: builds, never raises)."""
        error = SessionClosed(failure(params, exc, self.settings))
        error.short = short_failure(params, exc, self.settings)
        return error

    def _give_up_connecting(self):
        """Stop a connection attempt that our own wait gave up on (pika's did not yet)."""
        try:
            if not (self._connection.is_closed or self._connection.is_closing):
                self._connection.close()
        except pika.exceptions.AMQPError:
            pass   # still bringing the stack up: pika's stack_timeout ends it

    def loss(self):
        """The line saying this session's broker is gone, why, and which broker the
        next attempt starts at (the route remembers the failure): one per lost connection."""
        candidates = [address(p) for p in parameters(self.settings)]
        why = brokers.reason(self.close_reason)
        following = self.route.lost(self.address, why, candidates, time.monotonic())
        return f"lost the broker {self.address} ({why}); reconnecting to {following}"

    def close(self, timeout=REPLY_TIMEOUT):
        """Close cleanly (the broker requeues unacked deliveries); wait for it."""
        if self._connection is None or self.closed.is_set():
            return
        if self._connection.is_open:
            self._connection.close()
        self.closed.wait(timeout)

    def _on_connection_closed(self, connection, reason):
        if connection is self._connection:  # not an earlier broker of the list
            self._mark_closed(reason)

    def _on_channel_closed(self, channel, reason):
        self._mark_closed(reason)
        # A channel closed by the broker (e.g. PRECONDITION_FAILED) leaves the
        # connection useless to us: close it so the process can start over.
        if self._connection.is_open:
            self._connection.close()

    def abort(self):
        """Give up on this session (a bug in a callback): close it, the process starts over."""
        self._mark_closed("aborted after an internal error")
        if self._connection.is_open:
            self._connection.close()

    def _on_consumer_cancelled(self, frame):
        # The broker cancelled our consumer (its queue was deleted, or a node
        # went away; RabbitMQ 4 does this for quorum queues): nothing more will
        # be delivered here. Start over: the process restarts and redeclares.
        self._mark_closed(f"the broker cancelled the consumer {frame.method.consumer_tag}")
        if self._connection.is_open:
            self._connection.close()

    def _mark_closed(self, reason):
        if self.close_reason is None:
            self.close_reason = reason
        self.closed.set()

    @property
    def is_open(self):
        return not self.closed.is_set()

    def write_promptly(self):
        """Send each write at the end of the hub's turn, not on the next writable
        event (promptwrite.py: a worker's ack per task); True if pika allows it."""
        return promptwrite.install(self._connection)

    def flush(self, timeout=1.0):
        """Wait until the frames pika buffered (an ack, say) are in the kernel's socket
        buffer: from there they reach the broker even if this process dies next.
        Frames are otherwise written on the hub's next writable event; a worker that
        starts its next task at once, and is killed by it, would lose the last ack."""
        transport = getattr(self._connection, "_transport", None)
        buffered = getattr(transport, "get_write_buffer_size", None)
        if buffered is None:    # another pika: one hub iteration writes what it can
            gevent.sleep(0)
            return
        deadline, pause = time.monotonic() + timeout, 0
        while self.is_open and buffered() and time.monotonic() < deadline:
            gevent.sleep(pause)
            pause = 0.001   # still buffered: the socket is full, do not spin

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

    def declare_queue(self, queue):
        """Declare a durable queue as taskqueue wants it; TopologyError if it exists otherwise.
        Return how many messages it holds ready."""
        arguments = self._accepted_arguments(queue, queue_arguments(queue, self.settings))
        try:
            frame = self._call(self._channel.queue_declare, queue, durable=True,
                               arguments=arguments)
            return frame.method.message_count
        except SessionClosed:
            if getattr(self.close_reason, "reply_code", None) in (403, 405, 406):
                raise TopologyError(explain_refusal(queue, self.settings, self.close_reason)) from None
            raise

    def _accepted_arguments(self, queue, arguments):
        """What `queue` is declared with: `arguments`, or, when an older taskqueue declared
        it, theirs (legacy_arguments; tried aside, so that a refusal closes no channel of ours)."""
        while True:
            refused = AsyncResult()
            self._declare_aside(queue, arguments, refused.set)
            reason = self._wait(refused, REPLY_TIMEOUT, f"declare {queue}")
            older = reason and legacy_arguments(queue, arguments, reason)
            if older is None:
                return arguments   # taken, or refused: the declare that follows says why
            _note_legacy(queue, arguments, older)
            arguments = older

    def declare_queue_async(self, queue, on_done):
        """Declare `queue` on a short-lived channel of its own; on_done(None), or
        on_done(reason) if the broker refused, runs in the hub.

        A refusal closes only that channel, so one queue declared elsewhere with
        other arguments does not stop everything else on this session.
        """
        def answered(reason, arguments):
            older = reason and legacy_arguments(queue, arguments, reason)
            if older is not None:
                _note_legacy(queue, arguments, older)
                self._declare_aside(queue, older, lambda again: answered(again, older))
            else:
                on_done(reason and explain_refusal(queue, self.settings, reason))
        wanted = queue_arguments(queue, self.settings)
        self._declare_aside(queue, wanted, lambda reason: answered(reason, wanted))

    def _declare_aside(self, queue, arguments, on_done):
        """Declare `queue` on a short-lived channel; on_done(None), or on_done(the
        broker's close reason) if it refused, runs in the hub."""
        def on_open(channel):
            channel.add_on_close_callback(on_close)
            channel.queue_declare(queue, durable=True, arguments=arguments,
                                  callback=lambda frame: on_ok(channel))

        def on_ok(channel):
            done.append(True)
            on_done(None)
            channel.close()

        def on_close(channel, reason):
            # Only a broker's answer is a refusal: a closing connection is not.
            if not done and getattr(reason, "reply_code", 0) not in (0, 200) and \
                    type(reason).__name__ == "ChannelClosedByBroker":
                on_done(reason)
        done = []
        self._connection.channel(on_open_callback=on_open)

    def bind_delay_end(self):
        """Bind taskqueue to the end of the delay chain (delays.DELIVER_EXCHANGE). A
        dispatcher does it as it starts: a `taskqueue` declared anew (deleted, the
        broker's data lost) has lost that binding, and a publisher declares the
        chain only once per session."""
        self._call(self._channel.exchange_declare, delays.DELIVER_EXCHANGE,
                   exchange_type="fanout", durable=True)
        self._call(self._channel.queue_bind, TASK_QUEUE, delays.DELIVER_EXCHANGE)

    def declare_onehop(self, task_queue=False, worker_queues=()):
        """Declare the one-hop exchanges (onehop.py) and bind `taskqueue` to the alternate
        exchange (task_queue=True: the queue must exist) and each (queue, worker_type) of
        `worker_queues` to the direct exchange. Idempotent. On a short-lived channel of
        its own, so that a refusal closes no channel of ours: returns None, or the
        refusal as a sentence (the caller decides whether it is fatal: the dispatcher
        path works without the one-hop topology). SessionClosed if the connection goes."""
        plan = onehop.declarations(TASK_QUEUE if task_queue else None, worker_queues)
        opened = AsyncResult()
        self._connection.channel(on_open_callback=opened.set)
        channel = self._wait(opened, REPLY_TIMEOUT, "channel open")
        refused = AsyncResult()
        channel.add_on_close_callback(lambda ch, reason: refused.set(reason))
        steps = [(f"declare exchange {name}", channel.exchange_declare, (name,),
                  {"exchange_type": kind, "durable": True, "arguments": arguments or None})
                 for name, kind, arguments in plan.exchanges]
        steps += [(f"bind {queue} to {exchange} (routing key {key!r})", channel.queue_bind,
                   (queue, exchange), {"routing_key": key})
                  for queue, exchange, key in plan.queue_bindings]
        for what, method, args, kwargs in steps:
            reply = AsyncResult()
            method(*args, callback=reply.set, **kwargs)
            gevent.wait([reply, refused, self.closed], count=1, timeout=REPLY_TIMEOUT)
            if reply.ready():
                continue
            if refused.ready() and not self.closed.is_set():
                return onehop.explain_refusal(what, refused.get())
            raise SessionClosed(f"{what}: " + (f"failed: {self.close_reason!r}"
                                               if self.closed.is_set()
                                               else f"no reply in {REPLY_TIMEOUT:g}s"))
        if channel.is_open:
            channel.close()
        return None

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

    def purge(self, queue):
        """Remove every ready message of `queue`; return how many went."""
        return self._call(self._channel.queue_purge, queue).method.message_count

    def publish_confirmed(self, queue, body, props):
        """Publish and wait for the broker's confirm, on a confirm channel of its own
        (opened on first use); raise SessionClosed unless the broker acked it."""
        self._publish_on_confirm_channel("", queue, body, props, queue)

    def publish_delayed(self, queue, worker_type, body, props, seconds):
        """Publish a task for `worker_type` that reaches `queue` (taskqueue, or its
        worker queue: the dispatcher routes it by its worker_type header) after
        `seconds`, rounded up; wait for the broker's confirm as publish_confirmed does.
        The delay chain (delays.py) is declared on first use by this session.
        ValueError for a delay out of range or another queue; TopologyError when the
        broker refuses a queue of the chain; SessionClosed unless the broker acked it."""
        exchange, routing_key = delays.route(seconds)
        if queue not in (TASK_QUEUE, worker_queue(worker_type)):
            raise ValueError(f"a delayed task reaches {TASK_QUEUE} (the dispatcher forwards it "
                             f"to {worker_queue(worker_type)}), not {queue!r}")
        out = delayed_properties(props, worker_type, seconds)
        if not self._delays_declared:
            self._declare_delays()
            self._delays_declared = True
        self._publish_on_confirm_channel(exchange, routing_key, body, out,
                                         f"{queue} in {delays.whole_seconds(seconds)}s")

    def _declare_delays(self):
        """Declare the delay chain on the confirm channel; a refusal closes it (a new one
        opens on the next publish) and raises TopologyError naming the queue."""
        task_queue = self._accepted_arguments(TASK_QUEUE, queue_arguments(TASK_QUEUE, self.settings))
        channel = self._ensure_confirm_channel()
        plan = delays.declarations(self.settings, TASK_QUEUE, task_queue)
        for name, kind in plan.exchanges:
            self._call_on(channel, channel.exchange_declare, f"declare exchange {name}",
                          name, exchange_type=kind, durable=True)
        for name, arguments in plan.queues:
            try:
                self._call_on(channel, channel.queue_declare, f"declare {name}", name,
                              durable=True, arguments=arguments)
            except SessionClosed:
                reason = self._confirm_close_reason
                if getattr(reason, "reply_code", None) not in (403, 405, 406):
                    raise
                if name == TASK_QUEUE:
                    raise TopologyError(explain_refusal(name, self.settings, reason)) from None
                raise TopologyError(explain_delay_refusal(name, arguments, reason)) from None
        for name, exchange, pattern in plan.queue_bindings:
            self._call_on(channel, channel.queue_bind, f"bind {name}", name, exchange,
                          routing_key=pattern)
        for destination, source, pattern in plan.exchange_bindings:
            self._call_on(channel, channel.exchange_bind, f"bind {destination}",
                          destination, source, routing_key=pattern)

    def _call_on(self, channel, method, what, *args, **kwargs):
        """Call `method` of `channel` (not the session's own) and wait for its reply."""
        reply = AsyncResult()
        self._confirm_reply = reply
        method(*args, callback=reply.set, **kwargs)
        return self._wait(reply, REPLY_TIMEOUT, what)

    def _ensure_confirm_channel(self):
        if self._confirm_channel is None or not self._confirm_channel.is_open:
            opened = AsyncResult()
            self._connection.channel(on_open_callback=opened.set)
            channel = self._wait(opened, REPLY_TIMEOUT, "channel open")
            channel.add_on_close_callback(self._on_confirm_channel_closed)
            ready = AsyncResult()
            # RabbitMQ returns an unroutable message before acking it: remember the return.
            channel.add_on_return_callback(lambda *args: self._confirmed.set("Basic.Return"))
            channel.confirm_delivery(
                lambda frame: self._confirmed.ready() or self._confirmed.set(frame.method.NAME),
                callback=ready.set)
            self._wait(ready, REPLY_TIMEOUT, "confirm mode")
            self._confirm_channel = channel
            self._delays_declared = False   # a refused declare closed the last one
        return self._confirm_channel

    def _on_confirm_channel_closed(self, channel, reason):
        # Whatever waits on this channel learns why at once, not after REPLY_TIMEOUT.
        self._confirm_close_reason = reason
        for result in (self._confirm_reply, self._confirmed):
            if result is not None and not result.ready():
                result.set_exception(SessionClosed(f"channel closed: {reason!r}"))

    def _publish_on_confirm_channel(self, exchange, routing_key, body, props, what):
        self._ensure_confirm_channel()
        self._confirmed = AsyncResult()
        self._confirm_channel.basic_publish(exchange, routing_key, body, props, mandatory=True)
        answer = self._wait(self._confirmed, REPLY_TIMEOUT, f"confirm from {what}")
        if answer != "Basic.Ack":
            raise SessionClosed(f"the broker did not take a message for {what} ({answer})")

    def enable_confirms(self, on_confirm, on_return):
        """Publisher confirms; in the hub, on_confirm(frame) gets each Basic.Ack/Nack and
        on_return(routing_key, props, body) each mandatory message it could not route
        (RabbitMQ sends the return before that message's ack)."""
        self._channel.add_on_return_callback(
            lambda channel, method, props, body: on_return(method.routing_key, props, body))
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


#: RabbitMQ's direct reply-to pseudo-queue: replies without declaring a queue.
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"


def publish_delayed_blocking(channel, settings, worker_type, body, props, seconds, declare=True):
    """Publish a task for `worker_type` that reaches taskqueue after `seconds` (rounded
    up), on a pika BlockingChannel in confirm mode (blocking_channel gives one); declares
    the delay chain first unless told it is declared on this connection already
    (idempotent, but a few dozen round trips). ValueError for a delay out of range;
    TopologyError, TaskqueueError with a readable reason otherwise."""
    exchange, routing_key = delays.route(seconds)
    out = delayed_properties(props, worker_type, seconds)
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
    """Declare the delay chain (delays.declarations) on a pika BlockingChannel;
    TopologyError when the broker refuses a queue of it."""
    task_queue = blocking_arguments(channel.connection, TASK_QUEUE, queue_arguments(TASK_QUEUE, settings))
    plan = delays.declarations(settings, TASK_QUEUE, task_queue)
    for name, kind in plan.exchanges:
        channel.exchange_declare(name, exchange_type=kind, durable=True)
    for name, arguments in plan.queues:
        try:
            channel.queue_declare(name, durable=True, arguments=arguments)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if name == TASK_QUEUE:
                raise TopologyError(explain_refusal(name, settings, exc)) from None
            raise TopologyError(explain_delay_refusal(name, arguments, exc)) from None
    for name, source, pattern in plan.queue_bindings:
        channel.queue_bind(name, source, routing_key=pattern)
    for destination, source, pattern in plan.exchange_bindings:
        channel.exchange_bind(destination, source, routing_key=pattern)


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
    connection = _blocking_connection(settings, None, timeout)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        yield channel
    except pika.exceptions.AMQPError as exc:
        raise TaskqueueError(f"{describe(settings)}: {exc!r}") from exc
    finally:
        if connection.is_open:
            connection.close()


# -- a kept blocking connection, for taskqueue.client ----------------------------

class PublishRefused(TaskqueueError):
    """The broker did not take a message: it returned it unroutable, or nacked it."""


class PublishNacked(PublishRefused):
    """The broker nacked `subject` (a message) `tries` times: see nacks.py."""

    def __init__(self, subject, tries=1):
        super().__init__(nacks.refused(subject, tries))
        self.subject = subject

    def after(self, tries):
        return PublishNacked(self.subject, tries)


def blocking_connect(settings, name, timeout=REPLY_TIMEOUT):
    """A BlockingConnection to the first broker of `settings` that answers; TaskqueueError
    naming each one tried otherwise. For ordinary (threaded) code: not thread-safe."""
    return _blocking_connection(settings, name, timeout)


def _blocking_connection(settings, name, timeout):
    """The first broker that answers, in this process's route (process_route), each
    given [amqp] connect_timeout; SessionClosed naming each one tried otherwise."""
    failures = []
    route = process_route()
    for params in ordered_parameters(settings, route):
        params.blocked_connection_timeout = timeout
        if name is not None:
            params.client_properties = {"connection_name": name}
        try:
            connection = pika.BlockingConnection(params)
        except CONNECT_FAILED as exc:
            failures.append(failure(params, exc, settings))
            route.attempt_failed(address(params), short_failure(params, exc, settings),
                                 time.monotonic())
            continue
        route.connected(address(params), "")
        return connection
    raise BrokerUnreachable("cannot connect to the broker: " + "; ".join(failures))


#: What a blocking connection raises once it is gone (closed by the broker, the
#: network, a dead peer): the client reconnects on these.
CONNECTION_LOST = (pika.exceptions.AMQPConnectionError, pika.exceptions.ConnectionWrongStateError,
                   pika.exceptions.ChannelWrongStateError, pika.exceptions.ChannelClosed)


def blocking_declare(channel, settings, queue):
    """Declare `queue` as taskqueue wants it, on a blocking channel; TopologyError if it
    exists with other arguments."""
    arguments = blocking_arguments(channel.connection, queue, queue_arguments(queue, settings))
    try:
        channel.queue_declare(queue, durable=True, arguments=arguments)
    except pika.exceptions.ChannelClosedByBroker as exc:
        raise TopologyError(explain_refusal(queue, settings, exc)) from None


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
    """Declare, on a pika BlockingChannel, what a one-hop publish needs: the exchanges,
    `taskqueue` (as every component declares it) and its binding to the alternate
    exchange. TopologyError naming what the broker refused (the channel is then closed)."""
    plan = onehop.declarations(TASK_QUEUE)
    declare_onehop_exchanges_blocking(channel)
    blocking_declare(channel, settings, TASK_QUEUE)
    for queue, exchange, key in plan.queue_bindings:
        try:
            channel.queue_bind(queue, exchange, routing_key=key)
        except pika.exceptions.ChannelClosedByBroker as exc:
            raise TopologyError(onehop.explain_refusal(f"bind {queue} to {exchange}",
                                                       exc)) from None


def declare_onehop_exchanges_blocking(channel, worker_queues=()):
    """Declare the one-hop exchanges on a BlockingChannel and bind each (queue,
    worker_type) of `worker_queues` to the direct one; TopologyError on a refusal."""
    plan = onehop.declarations(None, worker_queues)
    what = None
    try:
        for name, kind, arguments in plan.exchanges:
            what = f"declare exchange {name}"
            channel.exchange_declare(name, exchange_type=kind, durable=True,
                                     arguments=arguments or None)
        for queue, exchange, key in plan.queue_bindings:
            what = f"bind {queue} to {exchange}"
            channel.queue_bind(queue, exchange, routing_key=key)
    except pika.exceptions.ChannelClosedByBroker as exc:
        raise TopologyError(onehop.explain_refusal(what, exc)) from None


def onehop_properties(props, worker_type):
    """`props` (changed in place, and returned) made a one-hop task's: persistent, with
    the worker_type header the dispatcher reads when no worker queue took it."""
    props.delivery_mode = PERSISTENT
    props.headers = onehop.headers(worker_type, props.headers)
    return props


def blocking_publish_onehop(channel, worker_type, body, props):
    """Publish a one-hop task (mandatory) on a blocking channel in confirm mode; return
    once the broker confirmed it is in a queue (worker_<type>, or taskqueue through the
    alternate exchange). PublishRefused saying why not."""
    try:
        channel.basic_publish(onehop.EXCHANGE, worker_type, body, props, mandatory=True)
    except pika.exceptions.UnroutableError:
        raise PublishRefused(unroutable_onehop(worker_type)) from None
    except pika.exceptions.NackError:
        raise PublishNacked(f"the task for {worker_type} (into {worker_queue(worker_type)} "
                            f"or {TASK_QUEUE})") from None


def unroutable_onehop(worker_type):
    """Why the broker returned a one-hop task, in words."""
    return (f"the broker returned the task for {worker_type}: neither "
            f"{worker_queue(worker_type)} nor {TASK_QUEUE} took it (unroutable: {TASK_QUEUE} "
            f"does not exist or is not bound to {onehop.UNROUTED_EXCHANGE})")
