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

from taskqueue.broker import failover, fielddecode, promptwrite, sendbatch
from taskqueue.broker.pikaparams import (REPLY_TIMEOUT, address, describe, delayed_properties,
                                         failure, ordered_parameters, parameters, process_route,
                                         quiet_attempt_lines, short_failure)
from taskqueue.errors import BrokerUnreachable, PublishNacked, SessionClosed, TopologyError
from taskqueue.protocol import delays, nacks, onehop, topology

log = logging.getLogger(__name__)
sendbatch.install()
fielddecode.install()   # headers decoded within bounds, in every process that imports this
quiet_attempt_lines()   # one line per failed connection attempt, not pika's seven


def _note_legacy(queue, arguments, older):
    """Say what a queue declared otherwise costs, once per declare that meets it."""
    if "x-delivery-limit" in arguments and "x-delivery-limit" not in older:
        log.warning("%s", topology.LEGACY_DEAD_QUEUE)
    else:
        log.debug("queue %r exists without %s (an older taskqueue declared it, or the broker "
                  "is older than 3.10): its leader stays where it is", queue, topology.LEADER_LOCATOR)




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
        self._confirm_reply = None      # a declare on the confirm channel, awaited
        self._confirm_close_reason = None
        self._delays_declared = False
        self._confirm_seen = Event()    # set by each confirm once enable_confirms ran

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
        arguments = self._accepted_arguments(queue, topology.queue_arguments(queue, self.settings))
        try:
            frame = self._call(self._channel.queue_declare, queue, durable=True,
                               arguments=arguments)
            return frame.method.message_count
        except SessionClosed:
            if getattr(self.close_reason, "reply_code", None) in (403, 405, 406):
                raise TopologyError(topology.explain_refusal(queue, self.settings,
                                                             self.close_reason)) from None
            raise

    def _accepted_arguments(self, queue, arguments):
        """What `queue` is declared with: `arguments`, or, when an older taskqueue declared
        it, theirs (topology.legacy_arguments; tried aside, so that a refusal closes no channel
        of ours)."""
        while True:
            refused = AsyncResult()
            self._declare_aside(queue, arguments, refused.set)
            reason = self._wait(refused, REPLY_TIMEOUT, f"declare {queue}")
            older = reason and topology.legacy_arguments(queue, arguments, reason)
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
            older = reason and topology.legacy_arguments(queue, arguments, reason)
            if older is not None:
                _note_legacy(queue, arguments, older)
                self._declare_aside(queue, older, lambda again: answered(again, older))
            else:
                on_done(reason and topology.explain_refusal(queue, self.settings, reason))
        wanted = topology.queue_arguments(queue, self.settings)
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
        self._call(self._channel.queue_bind, topology.TASK_QUEUE, delays.DELIVER_EXCHANGE)

    def declare_onehop(self, task_queue=False, worker_queues=()):
        """Declare the one-hop exchanges (onehop.py) and bind `taskqueue` to the alternate
        exchange (task_queue=True: the queue must exist) and each (queue, worker_type) of
        `worker_queues` to the direct exchange. Idempotent. On a short-lived channel of
        its own, so that a refusal closes no channel of ours: returns None, or the
        refusal as a sentence (the caller decides whether it is fatal: the dispatcher
        path works without the one-hop topology). SessionClosed if the connection goes."""
        plan = onehop.declarations(topology.TASK_QUEUE if task_queue else None, worker_queues)
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
        """Declare the delay chain on the confirm channel; a refusal closes it (a new one
        opens on the next publish) and raises TopologyError naming the queue."""
        task_queue = self._accepted_arguments(
            topology.TASK_QUEUE, topology.queue_arguments(topology.TASK_QUEUE, self.settings))
        channel = self._ensure_confirm_channel()
        plan = delays.declarations(self.settings, topology.TASK_QUEUE, task_queue)
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
                if name == topology.TASK_QUEUE:
                    raise TopologyError(topology.explain_refusal(name, self.settings, reason)) from None
                raise TopologyError(topology.explain_delay_refusal(name, arguments, reason)) from None
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

    def ack(self, delivery_tag, multiple=False):
        self._channel.basic_ack(delivery_tag, multiple=multiple)

    def nack(self, delivery_tag, multiple=False, requeue=True):
        self._channel.basic_nack(delivery_tag, multiple=multiple, requeue=requeue)

    def reject(self, delivery_tag, requeue=True):
        self._channel.basic_reject(delivery_tag, requeue=requeue)

