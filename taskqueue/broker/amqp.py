"""The gevent `Session`, and what taskqueue's own processes change in pika.

A `Session` is one connection with one channel, driven by the gevent hub: what
the supervisor's children (dispatcher, workers) and the gevent tools use.
Its blocking-style methods (`open`, `declare_queue`, `consume`, ...) are
called from a greenlet and wait cooperatively for the broker's reply; pika
callbacks run in the hub and must never block or raise (an exception in a
callback closes the whole connection, on pika 1.2 and 1.4 alike).
Connection parameters and message properties are pikaparams.py's, blocking
connections for ordinary code blocking.py's, queue names and arguments topology.py's
(pure).

Importing this module changes pika for the whole process, which is what the
daemons and the tools want and an application using only the Client must not get
(client.py never imports it): headers decoded within bounds (fielddecode.py),
frames joined into one send (sendbatch.py), one log line per failed connection
attempt (pikaparams.quiet_attempt_lines); promptwrite.py patches a Session's own
transport when asked.

Importing this module in the supervisor, before any fork, is intended: the
import costs ~40 ms, which a restarted child then does not pay.
"""
import encodings.idna  # noqa: F401  getaddrinfo loads it lazily, which fails after a privilege drop
import logging
import time

import gevent
from gevent.event import AsyncResult, Event
import pika
from pika.adapters.gevent_connection import GeventConnection

from taskqueue.broker import declarations, failover, fielddecode, promptwrite, sendbatch
from taskqueue.broker.replyline import ReplyLine
from taskqueue.broker.pikaparams import (REPLY_TIMEOUT, address, describe, delayed_properties,
                                         failure, ordered_parameters, parameters, process_route,
                                         quiet_attempt_lines, short_failure)
from taskqueue.errors import BrokerUnreachable, PublishNacked, SessionClosed, TopologyError
from taskqueue.protocol import delays, nacks, onehop, plans, priorities, topology

log = logging.getLogger(__name__)
sendbatch.install()
fielddecode.install()   # headers decoded within bounds, in every process that imports this
quiet_attempt_lines()   # one line per failed connection attempt, not pika's seven




#: Longest close() waits for pika to close the socket after the broker's close-ok (seconds).
CLOSE_SOCKET_WAIT = 1.0


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
        self._onehop_declared = False    # publish_onehop
        self._confirm_seen = Event()    # set by each confirm once enable_confirms ran
        self._replies = None            # replyline.ReplyLine, made on the first reply
        self._getting = None            # AsyncResult of the basic.get under way
        #: The broker said it blocks publishers (a resource alarm): see eventlog.py.
        self.blocked = False

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
        self.blocked = False
        self._connection.add_on_connection_blocked_callback(
            lambda *_: setattr(self, "blocked", True))
        self._connection.add_on_connection_unblocked_callback(
            lambda *_: setattr(self, "blocked", False))
        self.address = address(self._connection.params)
        self.server = failover.server_summary(getattr(self._connection, "server_properties", None))
        self.route.connected(self.address, self.server)
        log.debug("connected to %s (%s)", self.address, self.server or "no server properties")
        channel = AsyncResult()
        self._connection.channel(on_open_callback=channel.set)
        self._channel = self._wait(channel, timeout, "channel open")
        self._channel.add_on_close_callback(self._on_channel_closed)
        self._channel.add_on_cancel_callback(self._on_consumer_cancelled)
        # pika tells a basic.get's callback of a message only; an empty queue, here.
        self._channel.add_callback(self._on_get_empty, [pika.spec.Basic.GetEmpty],
                                   one_shot=False)
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
        """Close cleanly (the broker requeues unacked deliveries); wait for it. The
        replies go first, on their own connection (what waits: within `timeout`)."""
        if self._replies is not None:
            self._replies.close(timeout)
        if self._connection is None:
            return
        if not self.closed.is_set():
            if self._connection.is_open:
                self._connection.close()
            self.closed.wait(timeout)
        # pika closes the socket on a later turn of the hub than the close-ok's: until then
        # the broker keeps the connection, and what it holds (a scheduler's exclusive lead
        # queues). A process that goes on (a test, a restarted scheduler) must not keep it.
        deadline = time.monotonic() + CLOSE_SOCKET_WAIT
        while getattr(self._connection, "_transport", None) is not None and \
                time.monotonic() < deadline:
            gevent.sleep(0.005)

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

    def open_channel(self):
        """Another channel on this session's connection (a greenlet waits for it):
        for what must not share the session's channel (its confirms, its closing on a
        refusal), task events say. SessionClosed if the session goes meanwhile."""
        if self.closed.is_set():
            raise SessionClosed(f"channel open: session closed: {self.close_reason!r}")
        opened = AsyncResult()
        self._connection.channel(on_open_callback=opened.set)
        return self._wait(opened, REPLY_TIMEOUT, "channel open")

    def declare_plan(self, plan, any_refusal=False):
        """Run a plan (plans.py) on channels of its own (declarations.run): TopologyError
        for a refusal it explains (any refusal: any_refusal), SessionClosed otherwise."""
        return declarations.run(plan, _AsideChannels(self, any_refusal=any_refusal))

    def write_promptly(self):
        """Send each write at the end of the hub's turn, not on the next writable
        event (promptwrite.py: a worker's ack per task); True if pika allows it."""
        return promptwrite.install(self._connection)

    def flush(self, timeout=1.0):
        """Wait until the frames pika buffered (an ack, say) are in the kernel's socket
        buffer: from there they reach the broker even if this process dies next.
        Frames are otherwise written on the hub's next writable event; a worker that
        starts its next task at once, and is killed by it, would lose the last ack.
        The replies (reply()) too: a task's reply is sent before its successor starts."""
        deadline, pause = time.monotonic() + timeout, 0
        transport = getattr(self._connection, "_transport", None)
        buffered = getattr(transport, "get_write_buffer_size", None)
        if buffered is None:    # another pika: one hub iteration writes what it can
            gevent.sleep(0)
        while buffered is not None and self.is_open and buffered() and \
                time.monotonic() < deadline:
            gevent.sleep(pause)
            pause = 0.001   # still buffered: the socket is full, do not spin
        if self._replies is not None:
            self._replies.flush(max(0.0, deadline - time.monotonic()))

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

    def consume(self, queue, on_message, arguments=None):
        """Start consuming; on_message(method, properties, body) runs in the hub.
        `arguments`: the consumer's (a stream's x-stream-offset)."""
        ok = AsyncResult()
        tag = self._channel.basic_consume(
            queue, lambda ch, method, props, body: on_message(method, props, body),
            arguments=arguments, callback=ok.set)
        self._wait(ok, REPLY_TIMEOUT, f"consume {queue}")
        return tag

    def get(self, queue):
        """One ready message of `queue`, (method, properties, body), to settle as a
        delivery; None when it holds none (basic.get: no consumer, no prefetch)."""
        if self.closed.is_set():
            raise SessionClosed(f"get from {queue}: session closed: {self.close_reason!r}")
        got = self._getting = AsyncResult()
        self._channel.basic_get(queue, lambda ch, method, props, body: got.set(
            (method, props, body)), auto_ack=False)
        return self._wait(got, REPLY_TIMEOUT, f"get from {queue}")

    def _on_get_empty(self, frame):
        if self._getting is not None and not self._getting.ready():
            self._getting.set(None)

    def queue_exists_async(self, queue, on_done):
        """Ask whether `queue` exists (a passive declare, on a channel of its own, which
        the broker closes when it does not), in a greenlet of its own; then
        on_done(True or False). Neither if the session goes meanwhile."""
        def ask():
            try:
                declarations.run([plans.existing_queue(queue)],
                                 _AsideChannels(self, any_refusal=True))
            except TopologyError:
                on_done(False)
            except SessionClosed as exc:
                log.debug("asking for %s: %s", queue, exc)  # whoever owns the session starts over
            else:
                on_done(True)
        gevent.spawn(ask)

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

    def publish_onehop(self, worker_type, body, props):
        """Publish a one-hop task (onehop.py) as Client.submit does and wait for the
        broker's confirm as publish_confirmed does: into worker_<type> (its high queue
        for a high priority), or `taskqueue` through the alternate exchange. What that
        needs is declared on first use by this session (plans.one_hop)."""
        if not self._onehop_declared:
            declarations.run(plans.one_hop(task_queue=True, settings=self.settings),
                             _AsideChannels(self))
            self._onehop_declared = True
        self._publish_until_taken(onehop.EXCHANGE,
                                  priorities.routing_key(worker_type, props.priority), body,
                                  props, f"the task for {worker_type}")

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
        self._confirm_seen = Event()

        def confirmed(frame):
            on_confirm(frame)
            self._confirm_seen.set()
        ok = AsyncResult()
        self._channel.confirm_delivery(confirmed, callback=ok.set)
        self._wait(ok, REPLY_TIMEOUT, "confirm mode")

    def await_confirm(self, timeout):
        """Wait until a confirm came (since the last call), the session closed, or
        `timeout` seconds passed (confirms.ConfirmWindow's wait)."""
        gevent.wait([self._confirm_seen, self.closed], count=1, timeout=timeout)
        self._confirm_seen.clear()

    # -- per-message operations (hub context, non-blocking) -----------------

    def publish(self, routing_key, body, props, exchange="", mandatory=False):
        self._channel.basic_publish(exchange, routing_key, body, props, mandatory=mandatory)

    def reply(self, reply_to, body, props):
        """Publish a reply to a task's `reply_to` (on the default exchange, not mandatory)
        on this process's reply connection (replyline.py), never on this session's own:
        a name the broker chokes on costs that reply, not this connection. Returns at
        once; flush() waits until it is sent."""
        if self._replies is None:
            self._replies = ReplyLine(self._open_reply_session)
        self._replies.send(reply_to, body, props)

    def _open_reply_session(self):
        """The reply connection (side_session)."""
        session = self.side_session("replies")
        session.write_promptly()
        return session

    def side_session(self, purpose):
        """Another open Session, for what must not share this one's connection (replies,
        task events): to the brokers this session would try (what failed lately last),
        named `<this one's name> <purpose>`, telling the supervisor nothing (its route
        has no report). BrokerUnreachable as open()."""
        route = failover.Route(first=self.route.first, failed=self.route.failed)
        return Session(self.settings, f"{self.name} {purpose}", route).open()

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
        channel = self.session.open_channel()
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
