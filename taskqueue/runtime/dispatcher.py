"""Route each message from `taskqueue` to `worker_<type>` (or its high queue: priorities.py).

`routing.route()` is the pure decision (which way a message came in and where
it goes); format plugins are loaded by `formats`. `Dispatcher` is the loop
around it: it consumes with a large prefetch, publishes with publisher
confirms, and acks an input only once its output is confirmed, many messages
in flight at once. What cannot be routed goes to `taskqueue_dead` with a
header giving the reason; nothing is acked away unpublished. What a publisher
may not send (inbound.py: headers not decoded, a body too big, a bad retry
count) is dead-lettered before routing; its forged dead-letter headers are
dropped and its priority clamped on the copy routed.

A task it dead-letters that has a reply_to answers its caller with a failure reply
(deadletters.failure_reply, as the worker's), once its dead letter is confirmed, and
only to RabbitMQ's reply queues (direct reply-to, `amq.gen-*`): the dispatcher serves
every type, and no group's reply_queues is its to read. The reply goes on the session's
reply connection (Session.reply), not on the confirm channel: a reply_to the broker
chokes on (a crafted direct reply-to name closes the whole connection) costs that reply,
not the inputs in flight, and the ledger holds only the copies of inputs.
"""
import logging
import time
from dataclasses import dataclass

import gevent
from gevent.event import Event

from taskqueue.broker import amqp, inbound, pikaparams
from taskqueue.broker.deadletters import (dead_properties, failure_reply, task_key,
                                          without_broker_headers)
from taskqueue.broker.eventlog import EventLog, NoEvents
from taskqueue.errors import SessionClosed
from taskqueue.host import logs
from taskqueue.protocol import delays, priorities, topology
from taskqueue.protocol.confirmledger import ConfirmLedger
from taskqueue.protocol.routing import BUILTIN_TYPES, Rejection, route
from taskqueue.runtime import formats
from taskqueue.supervision.lifecycle import EXIT_CONNECTION, EXIT_OK

log = logging.getLogger(__name__)

#: Seconds during which tasks for a queue the broker refused to declare go
#: to the dead-letter queue before the declare is tried again.
REFUSED_RETRY_SECONDS = 60
#: Seconds before an input whose copy the broker returned or refused goes back to taskqueue.
RETRY_SECONDS = 1.0
#: Seconds a type's high queue found missing is not looked for again (its tasks of high
#: priority go to worker_<type> meanwhile): a look costs a passive declare.
ABSENT_SECONDS = 10
READY = "ready"
#: What a failure reply from the dispatcher says before the dead letter's reason.
NOT_ROUTED = "not routed: "


@dataclass(frozen=True)
class Absent:
    """A high queue found missing: its type's tasks go to worker_<type> until `until`."""
    until: float


@dataclass(frozen=True)
class Refused:
    reason: str
    until: float


def forwarded_properties(props, decision):
    """The input's properties, kept, made persistent, with the content type the route
    gives (application/json for an envelope's workitem, text/plain for plain text),
    without the dead-letter headers a publisher sent, the priority at most
    inbound.MAX_PRIORITY."""
    out = pikaparams.copy_properties(props)
    out.delivery_mode = pikaparams.PERSISTENT
    if decision.content_type:
        out.content_type = decision.content_type
    if out.headers:
        out.headers = pikaparams.amqp_safe(
            inbound.without_forged(without_broker_headers(out.headers)))
    if out.priority is not None and out.priority > inbound.MAX_PRIORITY:
        out.priority = inbound.MAX_PRIORITY
    return out


def without_chain_deaths(props):
    """The properties of a task that came through the delay chain without the deaths
    its expiries added (delays.without_chain_deaths), so that nobody later reads them
    as failures; other messages' properties, as they are."""
    headers = props.headers
    if not headers or delays.DELAYED_HEADER not in headers:
        return props
    out = pikaparams.copy_properties(props)
    out.headers = delays.without_chain_deaths(headers)
    return out


class NackEpisode:
    """Logs the broker nacking routed messages once per episode, not once per message.

    A quorum queue whose leader's node went away nacks every publish until a new
    leader is elected (seconds): a dispatcher routing hundreds of tasks a second
    would otherwise write hundreds of lines (one cluster run: 1 344 of 1 466) for
    one event. One WARNING when nacks start; one INFO line, with the count, when
    the broker takes routed messages again.
    """

    def __init__(self):
        self.count = 0
        self.since = None

    def nacked(self, count, now):
        if self.since is None:
            self.since = now
            log.warning("the broker nacks routed messages (a queue without a leader?); "
                        "their inputs go back to %s after %gs until it takes them again",
                        topology.TASK_QUEUE, RETRY_SECONDS)
        self.count += count

    def acked(self, now):
        if self.since is not None:
            log.info("the broker takes routed messages again: %d nacked over %.1fs went back to %s",
                     self.count, now - self.since, topology.TASK_QUEUE)
            self.count, self.since = 0, None


class Dispatcher:
    """consume `taskqueue` → publish (confirmed) → ack the input after the confirm."""

    def __init__(self, session, prefetch, schedule=gevent.spawn_later, readers=None,
                 spawn=gevent.spawn, max_body_size=inbound.DEFAULT_MAX_BODY_SIZE, events=None):
        self._session = session
        self._events = events or NoEvents()     # eventlog.EventLog: routed, dead
        self._max_body_size = max_body_size    # [amqp] max_body_size
        self._spawn = spawn         # spawn(fn, *args): a greenlet (tests pass their own)
        self._readers = readers or {}   # content type -> formats.Format (installed plugins)
        self._schedule = schedule   # schedule(delay, fn): a timer (tests pass their own)
        self._prefetch = prefetch
        self._ledger = ConfirmLedger()   # the input delivery tag of each publish
        self._unsettled = set()     # input delivery tags not yet acked, nacked or rejected
        # Input delivery tag -> the failure reply (reply_to, body, props) it owes once its
        # dead letter is confirmed; dropped if the input goes back to taskqueue instead.
        self._answers = {}
        # Worker queue -> READY, a list of messages waiting for its declare,
        # or a Refused (the broker would not declare it as we want).
        self._queues = {topology.DEAD_QUEUE: READY}
        self._consumer_tag = None
        self._nacks = NackEpisode()
        self.drained = Event()

    def start(self):
        for queue in (topology.DEAD_QUEUE, topology.TASK_QUEUE):
            self._session.declare_queue(queue)
        self._session.bind_delay_end()
        # One hop (onehop.py): what a client publishes to the direct exchange for a type
        # with no bound queue comes here through its alternate exchange.
        problem = self._session.declare_onehop(task_queue=True)
        if problem:
            log.error("%s; one-hop tasks cannot be published until it is fixed (this "
                      "dispatcher routes what reaches %s as ever)", problem, topology.TASK_QUEUE)
        self._session.enable_confirms(
            lambda frame: self._guarded(self._on_confirm, frame),
            lambda queue, props, body: self._guarded(self._on_return, queue, props, body))
        self._session.qos(self._prefetch)
        self._consumer_tag = self._session.consume(topology.TASK_QUEUE, self._on_message)

    def stop(self, timeout):
        """Stop consuming and wait until every published message is confirmed."""
        self._session.cancel(self._consumer_tag)
        if self._ledger:
            self.drained.clear()
            self.drained.wait(timeout)
        return not self._ledger

    @property
    def unconfirmed(self):
        return len(self._ledger)

    # The callbacks run in the hub: they must not block, and must not raise
    # (pika would abort the connection), hence the guards.
    def _on_message(self, method, props, body):
        tag = method.delivery_tag
        self._unsettled.add(tag)
        try:
            refusal = inbound.refusal(props, body, self._max_body_size)
            if refusal:
                self._dead_letter(tag, props, body, refusal)
                return
            props = without_chain_deaths(props)
            decision = route(body, props.content_type, props.headers, self._readers)
            if isinstance(decision, Rejection):
                self._dead_letter(tag, props, body, decision.reason)
            else:
                self._route(decision.worker_type,
                            (tag, decision.body, forwarded_properties(props, decision)))
                self._events.add("routed", task_key(props, body), decision.worker_type)
        except Exception as exc:
            # Rejected without requeue: the broker dead-letters it (x-death), not lost.
            log.exception("cannot route delivery %s (message %s); rejecting it to %s",
                          tag, getattr(props, "message_id", None) or "-", topology.DEAD_QUEUE,
                          extra=logs.about(props))
            # Settled here, not by _ack_inputs: left unsettled, it would hold the
            # ack floor below every later input, and each would be acked alone.
            self._unsettled.discard(tag)
            self._session.reject(tag, requeue=False)
            self._answers.pop(tag, None)    # if it failed after _dead_letter: answered here
            self._answer_rejected(props, exc)
            self._events.add("dead", getattr(props, "message_id", None) or "-", None,
                             reason="the dispatcher failed routing it (see its log)")

    def _route(self, worker_type, message):
        """Send a routed task (tag, body, props) to its type's queue: one of high priority
        to the type's high queue when that exists (priorities.py: a worker of this version
        declared it), else to worker_<type>; never creating the high queue, which a pool
        of an older version would not consume."""
        low = topology.worker_queue(worker_type)
        if not priorities.is_high(message[2].priority):
            self._send(low, message)
            return
        queue = priorities.high_queue(worker_type)
        state = self._queues.get(queue)
        if state is READY:
            self._publish(queue, *message)
        elif isinstance(state, list):
            state.append(message)
        elif isinstance(state, Absent) and time.monotonic() < state.until:
            self._send(low, message)
        else:   # not looked for yet, deleted under us, or time to look again
            self._queues[queue] = [message]
            self._session.queue_exists_async(
                queue, lambda exists: self._guarded(self._on_looked, queue, low, exists))

    def _on_looked(self, queue, low, exists):
        waiting = self._queues.get(queue)
        waiting = waiting if isinstance(waiting, list) else []
        if exists:
            self._queues[queue] = READY
            for message in waiting:
                self._publish(queue, *message)
            return
        log.info("%s does not exist (no worker of this version has run): tasks of high "
                 "priority go to %s for %ds", queue, low, ABSENT_SECONDS)
        self._queues[queue] = Absent(time.monotonic() + ABSENT_SECONDS)
        for message in waiting:
            self._send(low, message)

    def _send(self, queue, message):
        """Publish `message` (tag, body, props) to `queue` once the queue is known to exist."""
        state = self._queues.get(queue)
        if state is READY:
            self._publish(queue, *message)
        elif isinstance(state, list):
            state.append(message)
        elif isinstance(state, Refused) and time.monotonic() < state.until:
            self._refused(queue, message, state.reason)
        else:  # a new worker type, a queue deleted under us, or time to try a refused one again
            self._queues[queue] = [message]
            self._session.declare_queue_async(
                queue, lambda refusal: self._guarded(self._on_declared, queue, refusal))

    def _on_declared(self, queue, refusal):
        waiting = self._queues.get(queue)
        waiting = waiting if isinstance(waiting, list) else []  # a later declare took them
        if refusal is None:
            self._queues[queue] = READY
            if queue != topology.DEAD_QUEUE:
                self._spawn(self._bind_onehop, queue)
            for message in waiting:
                self._publish(queue, *message)
            return
        log.error("%s; dead-lettering its tasks for %ds", refusal, REFUSED_RETRY_SECONDS)
        self._queues[queue] = Refused(refusal, time.monotonic() + REFUSED_RETRY_SECONDS)
        for message in waiting:
            self._refused(queue, message, refusal)

    def _bind_onehop(self, queue):
        """Bind a worker queue this dispatcher declared to the one-hop exchange, so that the
        type's next one-hop tasks skip this dispatcher (a queue an older taskqueue made is
        bound from then on). In a greenlet: nothing is lost if it fails, the tasks keep
        coming through the alternate exchange."""
        worker_type = topology.worker_type_of(queue)
        try:
            problem = self._session.declare_onehop(worker_queues=[(queue, worker_type)])
        except SessionClosed:
            return      # the dispatcher starts over, and binds again
        if problem:
            log.warning("%s; tasks for %s keep coming through %s", problem, worker_type,
                        topology.TASK_QUEUE)

    def _refused(self, queue, message, reason):
        tag, body, props = message
        if queue == topology.DEAD_QUEUE:  # nowhere to put it: keep it in taskqueue
            self._retry_later(tag)
        else:
            self._dead_letter(tag, props, body, reason)

    def _dead_letter(self, tag, props, body, reason):
        log.warning("dead-lettering message %s (delivery %s): %s", props.message_id or "-", tag, reason,
                    extra=logs.about(props))
        answer = failure_reply(props, NOT_ROUTED + reason)
        if answer is not None:
            self._answers[tag] = answer
        self._send(topology.DEAD_QUEUE, (tag, body, dead_properties(props, reason)))
        self._events.add("dead", task_key(props, body), _named_type(props), reason=reason)

    def _answer(self, reply_to, body, props):
        """Send a failure reply on the reply connection (Session.reply: queued, never
        blocks). One that cannot be sent costs its caller a timeout, not the dispatcher
        its session: the reply connection says why."""
        self._session.reply(reply_to, body, props)

    def _answer_rejected(self, props, exc):
        """The failure reply of an input rejected to the dead-letter queue (the broker
        dead-letters it as the reject arrives), if its properties allow one. Guarded: it
        follows a failure that the properties themselves may have caused."""
        try:
            answer = failure_reply(props, f"{NOT_ROUTED}the dispatcher failed on it: "
                                          f"{type(exc).__name__}: {exc}")
            if answer is not None:
                self._answer(*answer)
        except Exception:
            log.exception("no failure reply for the rejected delivery")

    def _publish(self, queue, tag, body, props):
        # mandatory: a queue deleted since we declared it returns the message
        # instead of dropping it. The sequence number counts only what was sent.
        self._session.publish(queue, body, props, mandatory=True)
        self._ledger.sent(tag, (queue, props.message_id, body))

    def _on_return(self, queue, props, body):
        """The broker could not route this message: its confirm, which follows, must
        not ack the input. It is the oldest unconfirmed publish of that very message."""
        self._ledger.returned((queue, props.message_id, body), "unroutable")
        if self._queues.get(queue) is READY:
            del self._queues[queue]   # declare it again before the next publish
        log.warning("the broker returned a message for %s (no such queue any more); "
                    "its input goes back to %s", queue, topology.TASK_QUEUE, extra=logs.about(props))

    def _on_confirm(self, frame):
        confirm = frame.method
        confirmed, nacked = [], 0
        for tag, problem in self._ledger.confirmed(confirm.delivery_tag, confirm.multiple,
                                                   confirm.NAME == "Basic.Ack"):
            if problem is None:
                confirmed.append(tag)
                continue
            nacked += problem[0] == "nacked"
            self._retry_later(tag)
        if nacked:
            self._nacks.nacked(nacked, time.monotonic())
        elif confirmed:
            self._nacks.acked(time.monotonic())
        self._ack_inputs(confirmed)
        for tag in confirmed:   # their dead letters are safe: tell whoever waits
            answer = self._answers.pop(tag, None)
            if answer is not None:
                self._answer(*answer)
        if not self._ledger:
            self.drained.set()

    def _ack_inputs(self, tags):
        """Ack inputs whose copies are confirmed: one `multiple` ack for those below
        every input still unsettled (one broker command for a batch of a quorum
        queue, not one each), the others one by one."""
        if not tags:
            return
        self._unsettled.difference_update(tags)
        floor = min(self._unsettled, default=None)
        below = [tag for tag in tags if floor is None or tag < floor]
        if len(below) > 1:
            self._session.ack(max(below), multiple=True)
        elif below:
            self._session.ack(below[0])
        for tag in tags:
            if floor is not None and tag > floor:
                self._session.ack(tag)

    def _retry_later(self, tag):
        """Send an input back to taskqueue after a pause, not in a hot loop. It comes
        again: a failure reply it owed waits for its next dead letter, if any."""
        self._answers.pop(tag, None)
        def requeue():
            if self._session.is_open:
                self._unsettled.discard(tag)
                self._session.nack(tag, requeue=True)
        self._schedule(RETRY_SECONDS, requeue)

    def _guarded(self, callback, *args):
        try:
            callback(*args)
        except Exception:
            log.exception("%s failed; the dispatcher starts over", callback.__name__)
            self._session.abort()


def _named_type(props):
    """The worker type a message's header names, when it is a string (a hostile one
    names anything: events.decode bounds what a reader takes)."""
    value = (props.headers or {}).get("worker_type")
    return value if isinstance(value, str) else None


def run_dispatcher(amqp_settings, settings, ctx):
    """The body of a dispatcher child; returns an exit code."""
    readers = load_formats()
    session = amqp.Session(amqp_settings, f"taskqueue {ctx.name}", ctx.route).open()
    events = EventLog(session, ctx.name, amqp_settings)    # its connection: once routing
    dispatcher = Dispatcher(session, settings.prefetch, readers=readers,
                            max_body_size=amqp_settings.max_body_size, events=events)
    try:
        dispatcher.start()
    except SessionClosed:
        if not session.connection_lost:
            raise   # the broker refused a declare or the consume: its message says which
        log.warning("%s", session.loss())   # lost while setting up: said as any loss
        return EXIT_CONNECTION
    ctx.ready()
    events.start()
    log.info("routing %s (prefetch %d)", topology.TASK_QUEUE, settings.prefetch)
    gevent.wait([ctx.stopping, session.closed], count=1)
    if not session.is_open:
        log.warning("%s", session.loss())
        return EXIT_CONNECTION
    if not dispatcher.stop(settings.stop_timeout):
        log.warning("stopping with %d publishes unconfirmed; their inputs return to %s",
                    dispatcher.unconfirmed, topology.TASK_QUEUE)
    events.close()
    session.close()
    return EXIT_OK


def load_formats():
    """Import the installed format plugins, once, as the child starts (a new one is
    read after a restart or a reload); log what each reads or why it cannot."""
    readers = formats.load_installed()
    for content_type, fmt in sorted(readers.items()):
        if fmt.problem and content_type in BUILTIN_TYPES:
            log.error("%s; it is not used", fmt.problem)
        elif fmt.problem:
            log.error("%s; messages of content type %s are dead-lettered", fmt.problem, content_type)
        else:
            log.info("format %s (%s) loaded", content_type, fmt.origin)
    return readers
