"""pika's connection parameters, message properties, and the gevent `Session`.

A `Session` is one connection with one channel, driven by the gevent hub: what
the supervisor's children (dispatcher, workers) and the gevent tools use.
Its blocking-style methods (`open`, `declare_queue`, `consume`, ...) are
called from a greenlet and wait cooperatively for the broker's reply; pika
callbacks run in the hub and must never block or raise (an exception in a
callback closes the whole connection, on pika 1.2 and 1.4 alike).
Headers are decoded within bounds (fielddecode.py), here and in blocking.py.
Blocking connections for ordinary code are blocking.py's; queue names and
arguments are topology.py's (pure). pika is imported here and in blocking.py
only (sendbatch.py and promptwrite.py patch two of its transport classes, fielddecode.py
its header decoder).

Importing this module in the supervisor, before any fork, is intended: the
import costs ~40 ms, which a restarted child then does not pay.
"""
import decimal
import encodings.idna  # noqa: F401  getaddrinfo loads it lazily, which fails after a privilege drop
import logging
import time
import urllib.parse

import gevent
from gevent.event import AsyncResult, Event
import pika
from pika.adapters.gevent_connection import GeventConnection

from taskqueue.broker import declarations, failover, fielddecode, promptwrite, sendbatch
from taskqueue.errors import PublishNacked, TaskqueueError, TopologyError
from taskqueue.host import tls
from taskqueue.protocol import delays, nacks, onehop, plans, topology

log = logging.getLogger(__name__)
sendbatch.install()
fielddecode.install()   # headers decoded within bounds (done on import too: said here)

#: Seconds to wait for a broker reply (open, declare, consume, close).
REPLY_TIMEOUT = 30.0
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
        _process_route = failover.random_route()
    return _process_route


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
    return failover.address(params.host, params.port)


def ordered_parameters(settings, route, now=None):
    """parameters(settings) in the order `route` (failover.Route) tries them."""
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


def failure(params, exc, settings):
    """One broker's connection failure in words: a TLS one names the file or name at fault."""
    return f"{params.host}:{params.port}: {tls.explain(exc, settings, params.host) or repr(exc)}"


def short_failure(params, exc, settings):
    """The same in a few words, for status and the supervisor's memory of failures."""
    return tls.explain(exc, settings, params.host) or failover.reason(exc)


def copy_properties(props):
    """A shallow copy of message properties: copy.copy's generic protocol costs
    the dispatcher more than routing the message does."""
    out = props.__class__.__new__(props.__class__)
    out.__dict__.update(props.__dict__)
    return out


def describe(settings):
    """Where we connect, for log lines; never includes the password."""
    return ", ".join(f"{p.host}:{p.port} vhost {p.virtual_host!r}" for p in parameters(settings))


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


def onehop_properties(props, worker_type):
    """`props` (changed in place, and returned) made a one-hop task's: persistent, with
    the worker_type header the dispatcher reads when no worker queue took it."""
    props.delivery_mode = PERSISTENT
    props.headers = onehop.headers(worker_type, props.headers)
    return props


class Session:
    """One AMQP connection and one channel, owned by the current process."""

    def __init__(self, settings, name, route=None):
        self.settings = settings
        self.name = name            # shown in the broker's connection list
        #: failover.Route: which broker to try first, whom to tell (a child's supervisor)
        self.route = route or process_route()
        self.address = None         # "host:port" of the broker once open
        self.server = ""            # what that broker says of itself (failover.server_summary)
        self.closed = Event()       # set once connection or channel is gone
        self.close_reason = None
        self._connection = None
        self._channel = None
        self._confirm_channel = None    # for publish_confirmed and publish_delayed
        self._confirmed = None
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
        self.server = failover.server_summary(getattr(self._connection, "server_properties", None))
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
        why = failover.reason(self.close_reason)
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

    @property
    def connection_lost(self):
        """Closed because the connection went (a node stopped, the network, the broker
        closing it), not because the broker refused something on the channel."""
        return isinstance(self.close_reason, pika.exceptions.AMQPConnectionError)

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
        frame = declarations.run([plans.wanted_queue(queue, self.settings)], _AsideChannels(self))
        return frame.method.message_count

    def declare_queue_async(self, queue, on_done):
        """Declare `queue` as declare_queue does, in a greenlet of its own; then on_done(None),
        or on_done(the refusal, as a sentence). Neither if the session goes meanwhile.

        The declare runs on channels of its own, so one queue declared elsewhere with
        other arguments does not stop everything else on this session; any refusal
        of the broker is one (the caller dead-letters that queue's messages a while).
        """
        def declare():
            try:
                declarations.run([plans.wanted_queue(queue, self.settings)],
                                 _AsideChannels(self, any_refusal=True))
            except TopologyError as exc:
                on_done(str(exc))
            except SessionClosed as exc:
                log.debug("declaring %s: %s", queue, exc)   # whoever owns the session starts over
            else:
                on_done(None)
        gevent.spawn(declare)

    def bind_delay_end(self):
        """Bind taskqueue to the end of the delay chain (delays.DELIVER_EXCHANGE). A
        dispatcher does it as it starts: a `taskqueue` declared anew (deleted, the
        broker's data lost) has lost that binding, and a publisher declares the
        chain only once per session."""
        declarations.run(plans.delay_end(), _AsideChannels(self))

    def declare_onehop(self, task_queue=False, worker_queues=()):
        """Declare the one-hop exchanges (onehop.py) and bind `taskqueue` to the alternate
        exchange (task_queue=True: the queue must exist) and each (queue, worker_type) of
        `worker_queues` to the direct exchange. Idempotent. On channels of its own, so
        that a refusal closes no channel of ours: returns None, or the refusal as a
        sentence (the caller decides whether it is fatal: the dispatcher path works
        without the one-hop topology). SessionClosed if the connection goes."""
        try:
            declarations.run(plans.one_hop(task_queue, worker_queues), _AsideChannels(self))
        except TopologyError as exc:
            return str(exc)
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
        (opened on first use). A nack is tried again as nacks.py says, then raises
        PublishNacked (the broker is there: it did not take the message); SessionClosed
        if the session goes, or the broker returns the message (no such queue)."""
        self._publish_until_taken("", queue, body, props, f"the message for {queue}")

    def publish_delayed(self, queue, worker_type, body, props, seconds):
        """Publish a task for `worker_type` that reaches `queue` (taskqueue, or its
        worker queue: the dispatcher routes it by its worker_type header) after
        `seconds`, rounded up; wait for the broker's confirm as publish_confirmed does.
        The delay chain (delays.py) is declared on first use by this session.
        ValueError for a delay out of range or another queue; TopologyError when the
        broker refuses a queue of the chain; PublishNacked and SessionClosed as for
        publish_confirmed."""
        exchange, routing_key = delays.route(seconds)
        if queue not in (topology.TASK_QUEUE, topology.worker_queue(worker_type)):
            raise ValueError(f"a delayed task reaches {topology.TASK_QUEUE} (the dispatcher "
                             f"forwards it to {topology.worker_queue(worker_type)}), not {queue!r}")
        out = delayed_properties(props, worker_type, seconds)
        if not self._delays_declared:
            self._declare_delays()
            self._delays_declared = True
        self._publish_until_taken(exchange, routing_key, body, out,
                                  f"the message for {queue} in {delays.whole_seconds(seconds)}s, "
                                  f"into {delays.first_queue(seconds, topology.TASK_QUEUE)}")

    def _declare_delays(self):
        """Declare the delay chain (plans.delay_chain); TopologyError naming the queue
        when the broker refuses one."""
        declarations.run(plans.delay_chain(self.settings), _AsideChannels(self))

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
            self._delays_declared = False   # what closed the last one may be a chain gone
        return self._confirm_channel

    def _on_confirm_channel_closed(self, channel, reason):
        # Whatever waits on this channel learns why at once, not after REPLY_TIMEOUT.
        if self._confirmed is not None and not self._confirmed.ready():
            self._confirmed.set_exception(SessionClosed(f"channel closed: {reason!r}"))

    def _publish_until_taken(self, exchange, routing_key, body, props, subject):
        """_publish_on_confirm_channel, tried again while the broker nacks it, as nacks.py
        says (this greenlet waits; the hub serves the connection meanwhile)."""
        nacks.retry(lambda: self._publish_on_confirm_channel(exchange, routing_key, body,
                                                             props, subject),
                    PublishNacked, sleep=gevent.sleep)

    def _publish_on_confirm_channel(self, exchange, routing_key, body, props, subject):
        """Publish `subject` (what the errors call the message) once and wait for its
        confirm: PublishNacked for a nack, SessionClosed for a return or a lost session."""
        if self.closed.is_set():   # a try after a nack, say: pika would raise its own error
            raise SessionClosed(f"publish {subject}: session closed: {self.close_reason!r}")
        self._ensure_confirm_channel()
        self._confirmed = AsyncResult()
        self._confirm_channel.basic_publish(exchange, routing_key, body, props, mandatory=True)
        answer = self._wait(self._confirmed, REPLY_TIMEOUT, f"confirm of {subject}")
        if answer == "Basic.Nack":
            raise PublishNacked(subject)
        if answer != "Basic.Ack":
            raise SessionClosed(f"the broker did not take {subject} ({answer})")

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


class _AsideChannels:
    """declarations.run's channels on a Session: short-lived ones of its own, so that a
    refusal closes none of the session's. A refused queue is explained (TopologyError)
    when the broker says 403, 405 or 406, or any_refusal; otherwise, as for a refused
    exchange or binding the plan does not explain, SessionClosed: the child starts over
    as for a lost broker (a quorum queue's process restarting answers 404, say)."""

    def __init__(self, session, any_refusal=False):
        self.session = session
        self.any_refusal = any_refusal

    def open(self):
        if self.session.closed.is_set():
            raise SessionClosed(f"channel open: session closed: {self.session.close_reason!r}")
        opened = AsyncResult()
        self.session._connection.channel(on_open_callback=opened.set)
        channel = self.session._wait(opened, REPLY_TIMEOUT, "channel open")
        refused = AsyncResult()
        channel.add_on_close_callback(lambda ch, reason: refused.ready() or refused.set(reason))
        return channel, refused

    def call(self, aside, declaration):
        channel, refused = aside
        method, args, kwargs = declarations.pika_call(channel, declaration)
        reply = AsyncResult()
        method(*args, callback=reply.set, **kwargs)
        session, what = self.session, declaration.what
        gevent.wait([reply, refused, session.closed], count=1, timeout=REPLY_TIMEOUT)
        if reply.ready():
            return reply.get()
        if session.closed.is_set():
            raise SessionClosed(f"{what} failed: {session.close_reason!r}")
        if refused.ready():
            if isinstance(refused.get(), pika.exceptions.ChannelClosedByBroker):
                raise declarations.Refused(refused.get())
            raise SessionClosed(f"{what} failed: {refused.get()!r}")
        raise SessionClosed(f"{what}: no reply from {describe(session.settings)} "
                            f"in {REPLY_TIMEOUT:g}s")

    def close(self, aside):
        channel, _ = aside
        if channel.is_open:
            channel.close()

    def explains(self, declaration, reason):
        return (self.any_refusal or declaration.kind != plans.QUEUE
                or getattr(reason, "reply_code", None) in (403, 405, 406))

    def failure(self, declaration, reason):
        return SessionClosed(f"{declaration.what} failed: {reason!r}")
