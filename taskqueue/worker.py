"""BaseWorker, the plugin API, and the worker child's consume loop.

A worker child consumes `worker_<type>` one delivery at a time. Each
`handle_task` runs in a real OS thread (taskthread.py) while the gevent hub keeps the AMQP
connection and its heartbeats alive, so an hour of computing does not cost
the connection. The channel handed to the plugin marshals its calls back to
the hub thread and makes sure each delivery is settled exactly once.
"""
import collections
import concurrent.futures
import logging
import os
import random
import threading
import time
import traceback

import gevent
from gevent.queue import Empty

from taskqueue.broker import amqp, inbound, pikaparams
from taskqueue.broker.deadletters import (dead_properties, failure_reply, task_key,
                                          without_broker_headers)
from taskqueue.broker.eventlog import EventLog
from taskqueue.broker.sideline import SideLine
from taskqueue.errors import PluginError, PublishNacked, SessionClosed, TaskCancelled
from taskqueue.host import logs, tracing
from taskqueue.protocol import (delays, expiry, priorities, replies, retries, topology,
                                tracecontext)
from taskqueue.runtime import cancels as cancelling, plugins
from taskqueue.runtime.intake import AHEAD_PREFETCH, Intake
from taskqueue.runtime.rategate import RateGate
from taskqueue.runtime.taskthread import TaskThread
from taskqueue.supervision.lifecycle import (EXIT_CANCELLED, EXIT_CONNECTION, EXIT_OK,
                                             EXIT_RECYCLE)

#: The plugin API: what plugins import from here (TaskCancelled: errors.py's).
__all__ = ["BaseWorker", "TaskCancelled"]

log = logging.getLogger(__name__)

#: Seconds a plugin's basic_publish waits for the hub to send the message.
PUBLISH_TIMEOUT = 30.0
#: Seconds a finished task's `done` report waits for the next `busy` to share its write.
REPORT_HOLD = 0.005


class BaseWorker:
    """Base class of worker plugins.

    Subclass it and implement `handle_task`; register `YourClass.factory`
    under the entry-point group `worker.plugins`, with the worker type as
    the entry point's name. One instance lives in each worker process.
    """

    def __init__(self, group=None):
        #: The WorkerGroup this process belongs to (type, subgroup, user, ...).
        self.group = group
        #: Every option of the group's config section, as strings.
        self.settings = dict(group.options) if group is not None else {}

    @classmethod
    def factory(cls, group):
        """Build the worker for `group`; called once per process, after the privilege drop."""
        return cls(group)

    def setup(self):
        """Called once before the first task, as the configured user."""

    def handle_task(self, channel, method, header, body):
        """Process one task. Settle it with channel.basic_ack/basic_nack/basic_reject.

        channel: offers basic_ack, basic_nack, basic_reject, basic_publish, and
            retry(delay=None): come back later (docs/03-writing-a-plugin.md, "Retrying"),
            reply(body), and dead_letter(reason): give the task up, with that reason.
        method: delivery_tag, redelivered, routing_key.
        header: the message properties (message_id, correlation_id, reply_to, headers...).
        body: bytes; the workitem as JSON when it came through the dispatcher.
        If this raises, the task is retried while the group's max_retries allow,
        else rejected without requeue (dead-lettered); whoever waits for its reply
        gets a failure reply then (replies.py), as for a task the plugin rejects.
        If it returns without settling, the task is acked and a warning logged.
        """
        raise NotImplementedError

    def teardown(self):
        """Called once after the last task, before the process exits."""


class HubCalls:
    """Run callables in the hub's thread on behalf of other threads, in order."""

    def __init__(self, before_wait=None):
        self._calls = collections.deque()
        # Called by call() before a task thread waits for the hub: the hub may be
        # waiting for that very thread (TaskThread.hub_needed).
        self._before_wait = before_wait or (lambda: None)
        self._hub_thread = threading.get_ident()
        self._wakeup = gevent.get_hub().loop.async_()
        self._wakeup.start(self._run_pending)

    def submit(self, fn):
        """Run fn() in the hub's thread: at once when called there (so that it is
        done before anything that follows, a close included), else queued."""
        if threading.get_ident() == self._hub_thread:
            self.run_pending()
            fn()
            return
        self._calls.append(fn)
        self._wakeup.send()

    def run_pending(self):
        """Run what other threads queued; called before the session closes, too."""
        self._run_pending()

    def call(self, fn, timeout):
        """Run fn() in the hub and return its result; for other threads only."""
        future = concurrent.futures.Future()
        if threading.get_ident() != self._hub_thread:
            self._before_wait()

        def run():
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)
        self.submit(run)
        return future.result(timeout)

    def close(self):
        """Stop waking the hub: no thread calls any more (taskqueue.testing, after its task)."""
        self.run_pending()
        self._wakeup.stop()

    def _run_pending(self):
        while self._calls:
            fn = self._calls.popleft()
            try:
                fn()
            except Exception:
                log.exception("call from a task thread failed")


class TaskChannel:
    """The `channel` a plugin sees for one delivery (pika-style methods).

    Settling is recorded at once in the calling thread, so a second ack, or
    the worker's own default settlement, can never reach the broker twice.
    """

    def __init__(self, session, hub_calls, delivery_tag, header=None, reply_queues=()):
        self._session = session
        self._hub = hub_calls
        self._tag = delivery_tag
        self._header = header        # the task's properties: where a reply goes
        self._reply_queues = reply_queues   # the group's reply_queues (replies.py)
        self.settlement = None       # "ack", "nack", "reject", "retry" or "dead" once settled
        self.requeued = False        # nack or reject with requeue=True
        self.retry_delay = None      # what retry() asked for (None: the group's backoff)
        self.dead_reason = None      # what dead_letter() gave as the reason
        self.replied = False         # reply() sent the plugin's answer: no failure reply
        # The hub settles a cancelled task while the plugin's thread may settle it too:
        # the first to claim the settlement wins (claim()).
        self._claiming = threading.Lock()

    def basic_ack(self, delivery_tag=0, multiple=False):
        self._settle("ack", delivery_tag, multiple, lambda: self._session.ack(self._tag))

    def basic_nack(self, delivery_tag=0, multiple=False, requeue=True):
        if self._settle("nack", delivery_tag, multiple,
                        lambda: self._session.nack(self._tag, requeue=requeue)):
            self.requeued = requeue

    def basic_reject(self, delivery_tag=0, requeue=True):
        if self._settle("reject", delivery_tag, False,
                        lambda: self._session.reject(self._tag, requeue=requeue)):
            self.requeued = requeue

    def retry(self, delay=None):
        """Put the task off: it comes back to its queue after `delay` seconds (None:
        the group's backoff for this attempt), counted in the header
        x-taskqueue-retries, and not as a death. Settles the delivery. Bounded
        by the group's max_retries (retries.py): past it, the task is dead-lettered."""
        if delay is not None and (isinstance(delay, bool) or not isinstance(delay, (int, float))
                                  or not 0 <= delay <= delays.MAX_DELAY):
            raise ValueError(f"retry: delay {delay!r} is not a number of seconds from 0 to "
                             f"{delays.MAX_DELAY}")
        if not self.claim("retry"):   # the worker publishes the retry, then acks (_retry)
            log.warning("retry on delivery %s ignored: already settled by basic_%s",
                        self._tag, self.settlement)
            return
        self.retry_delay = delay

    def dead_letter(self, reason):
        """Give the task up: it goes to the dead-letter queue with `reason` (a str) in
        its header x-taskqueue-reason, as a task whose retries are spent does (the
        worker publishes the copy, then acks: settle_handled). Settles the delivery."""
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError(f"dead_letter: reason {reason!r} is not a non-empty str")
        if not self.claim("dead"):
            log.warning("dead_letter on delivery %s ignored: already settled by basic_%s",
                        self._tag, self.settlement)
            return
        self.dead_reason = reason

    @property
    def outcome(self):
        """The settlement as a lifecycle.TASK_OUTCOMES word."""
        if self.settlement == "dead":   # given up by the plugin: refused, dead-lettered
            return "reject"
        if self.settlement in ("ack", "retry"):
            return self.settlement
        return "requeue" if self.requeued else "reject"

    def basic_publish(self, exchange, routing_key, body, properties=None, mandatory=False):
        if isinstance(body, str):
            body = body.encode()
        self._hub.call(lambda: self._session.publish(routing_key, body, properties,
                                                     exchange=exchange, mandatory=mandatory),
                       PUBLISH_TIMEOUT)

    def reply(self, body, content_type=None):
        """Send `body` (bytes, or str sent as UTF-8) to whoever submitted the task and
        waits for an answer (its reply_to, e.g. `taskqueue submit --wait` or
        Client.call), with the task's correlation id. A task without reply_to has
        nobody waiting: a warning, nothing sent. A reply_to that is not a reply queue
        (replies.py: a submitter may name any queue, taskqueue's own too) gets a
        warning and nothing either; the task is settled as the plugin says."""
        header = self._header
        if header is None or not header.reply_to:
            log.warning("reply to delivery %s not sent: the task has no reply_to "
                        "(nobody waits for an answer)", self._tag)
            return
        if not replies.allowed(header.reply_to, self._reply_queues):
            log.warning("reply to task %s (delivery %s) not sent: its reply_to %r is not a reply "
                        "queue (%s; see reply_queues in taskqueue.conf(5))",
                        header.message_id or "-", self._tag, header.reply_to,
                        replies.describe(self._reply_queues))
            return
        if isinstance(body, str):
            body = body.encode()
            content_type = content_type or "text/plain; charset=utf-8"
        props = pikaparams.properties(correlation_id=header.correlation_id or header.message_id,
                                content_type=content_type)
        # On the reply connection (Session.reply): a reply_to the broker chokes on costs
        # that reply, not the connection this task is to be acked on. Returns at once.
        self._hub.call(lambda: self._session.reply(header.reply_to, body, props),
                       PUBLISH_TIMEOUT)
        self.replied = True

    def _settle(self, action, delivery_tag, multiple, send):
        if delivery_tag not in (0, self._tag):
            raise ValueError(f"basic_{action}: delivery tag {delivery_tag} is not the task being "
                             f"handled (tag {self._tag})")
        if not self.claim(action):
            log.warning("basic_%s on delivery %s ignored: already settled by basic_%s",
                        action, self._tag, self.settlement)
            return False
        if multiple:
            log.warning("basic_%s(multiple=True) settles only the task being handled", action)
        self._hub.submit(lambda: self._send(action, send))
        return True

    def claim(self, action):
        """Record `action` as the settlement unless there is one; True when it was recorded."""
        with self._claiming:
            if self.settlement is not None:
                return False
            self.settlement = action
            return True

    def _send(self, action, send):
        # A delivery tag belongs to its channel: once that is gone, the broker
        # has requeued the delivery and the tag must not be used on another.
        if self._session.is_open:
            send()
        else:
            log.warning("delivery %s not %sed: the connection is gone; the broker redelivers it",
                        self._tag, action)


def run_worker(group, amqp_settings, ctx, entry_point=None):
    """The body of a worker child: load the plugin (`entry_point`: as the supervisor
    found it, plugins.load), consume, handle, settle; return an exit code."""
    worker = plugins.load(group.worker_type, group, entry_point)
    call_plugin_hook(worker, "setup", group)
    session = amqp.Session(amqp_settings, f"taskqueue worker {ctx.name}", ctx.route).open()
    session.write_promptly()
    # One side connection for the task events and the cancels reader (sideline.py),
    # opened once the process consumes: 200 workers starting at once consume sooner.
    side = SideLine(session, "events+cancels", users=2)
    events = EventLog(session, ctx.name, amqp_settings, line=side)
    tasks = TaskThread(f"task {group.worker_type}")
    hub_calls = HubCalls(before_wait=tasks.hub_needed)
    cancels = cancelling.Cancels(session, ctx.name, line=side)
    try:
        intake, prefetch = _start_consuming(group, session)
        gate = RateGate.start_for(group, amqp_settings, session)   # None: no rate limit
    except SessionClosed:
        if not session.connection_lost:
            raise   # the broker refused a declare or the consume: its message says which
        # The connection went while setting up (a node stopping, a quorum leader
        # moving): a lost connection like any other, said once.
        log.warning("%s", session.loss())
        return _finish(worker, session, hub_calls, ctx, EXIT_CONNECTION, events, cancels)
    # Wake the loop when asked to stop or when the connection goes.
    ctx.stopping.rawlink(lambda _: intake.wake())
    session.closed.rawlink(lambda _: intake.wake())
    ctx.ready()
    # Read from the start of the cancels stream now: the first task waits for it.
    cancels.start()
    events.start()
    log.info("consuming %s (prefetch %d%s)", group.queue, prefetch,
             f", {prefetch - 1} tasks in advance while tasks take < {intake.lookahead:g}s"
             if intake.lookahead else "")
    done = 0
    while True:
        delivery = _next_delivery(intake.inbox, ctx)
        if delivery is None or ctx.stopping.is_set() or not session.is_open \
                or not cancels.read(ctx.stopping, session.closed):
            break
        method, props, body = delivery
        # The last task's settlement must be on its way before this one may
        # crash the process (with lookahead, this delivery came before the ack left).
        hub_calls.run_pending()
        session.flush()
        key = task_key(props, body)
        # Every line names it (and its trace), the plugin's threads' too, until set_task(None).
        trace = tracecontext.trace_id(props.headers)
        logs.set_task(key, trace)
        # Reported before the limit check: dead-lettering settles the task too,
        # and the supervisor forgets the deaths of a settled task.
        ctx.busy(key, method.redelivered)
        outcome = _refused(group, amqp_settings, session, events, key, *delivery)
        if outcome:
            _not_run(ctx, intake, outcome)
            continue
        # What the plugin sees and every copy is made from: no forged dead-letter headers.
        delivery = (method, inbound.admitted(props), body)
        outcome = _over_delivery_limit(group, amqp_settings, session, events, ctx, key,
                                       *delivery) or \
            _not_to_start(group, session, events, cancels, key, *delivery)
        if outcome:
            cancels.release()
            _not_run(ctx, intake, outcome)
            continue
        if gate is not None:
            if not gate.wait_turn(ctx.stopping):
                ctx.done("requeue", 0.0)   # never started: back to its queue as the worker closes
                break
            # It may have been cancelled, or its deadline passed, while it waited for its
            # turn (its token is spent: the limit is a ceiling, and this keeps it one).
            outcome = _not_to_start(group, session, events, cancels, key, *delivery)
            if outcome:
                cancels.release()
                _not_run(ctx, intake, outcome)
                continue
        events.add("started", key, group.worker_type, attempt=_attempt(delivery[1]),
                   redelivered=method.redelivered or None, trace=trace)
        outcome, seconds = _handle(worker, group, session, events, hub_calls, tasks, intake,
                                   cancels, key, *delivery)
        cancels.release()
        if outcome == "cancelled":
            return _replaced_after_cancel(worker, group, session, hub_calls, tasks, ctx, events,
                                          cancels, key, seconds)
        if outcome == "ack":
            events.add("done", key, group.worker_type, duration=seconds)
        ctx.done(outcome, seconds)
        logs.set_task(None)
        done += 1
        reason = _recycle_reason(group, done)
        if reason:
            log.info("%s: this process is replaced after its current task", reason)
            return _finish(worker, session, hub_calls, ctx, EXIT_RECYCLE, events, cancels)
        intake.task_done(seconds)
    if not session.is_open:
        log.warning("%s", session.loss())
        return _finish(worker, session, hub_calls, ctx, EXIT_CONNECTION, events, cancels)
    return _finish(worker, session, hub_calls, ctx, EXIT_OK, events, cancels)


def _replaced_after_cancel(worker, group, session, hub_calls, tasks, ctx, events, cancels, key,
                           seconds):
    """The running task `key` was cancelled and settled (_cancel_running): report it, stop
    its thread (TaskCancelled, then the group's stop_timeout) and leave, to be replaced."""
    # The ack and the report go now, not after the thread's grace (a task_timeout
    # meanwhile would count a death of a settled task).
    ctx.done("cancelled", seconds)
    ctx.flush()
    session.flush()
    logs.set_task(None)
    returned = cancelling.stop_task(tasks, tasks.current, group.stop_timeout)
    log.info("task %s cancelled while it ran: this process is replaced (its thread %s)", key,
             "returned" if returned else f"still ran {group.stop_timeout:g}s after TaskCancelled")
    return _finish(worker, session, hub_calls, ctx, EXIT_CANCELLED, events, cancels,
                   teardown=returned)


def _not_run(ctx, intake, outcome):
    """A task settled without running (refused, dead-lettered, expired, cancelled): said
    to the supervisor; the intake takes the next (one at a time, it asks for it)."""
    logs.set_task(None)
    ctx.done(outcome, 0.0)
    intake.task_done(0.0)


def _attempt(props):
    """Which run of the task this is: 1, then 1 + its retries so far."""
    done, _ = retries.read_count(props.headers)
    return (done or 0) + 1


def _next_delivery(inbox, ctx):
    """The next delivery, or None when stopping. A held `done` report waits a
    moment for the next task's `busy`, then goes out alone."""
    if ctx.holding:
        try:
            return inbox.get(timeout=REPORT_HOLD)
        except Empty:
            ctx.flush()
    return inbox.get()


def _refused(group, amqp_settings, session, events, key, method, props, body):
    """Dead-letter a task taskqueue does not take (inbound.refusal: its headers not
    decoded, a body too big, a bad retry count; a dead-letter header its publisher set;
    one hop, the dispatcher never saw it),
    before the plugin sees it; return the outcome ("dead", or "requeue": _copy_then_ack)
    if it did, else None."""
    reason = (inbound.refusal(props, body, amqp_settings.max_body_size)
              or inbound.forged_dead_letter_header(props))
    if reason is None:
        return None
    log.error("task %s (delivery %s) refused: %s; dead-lettering it", key, method.delivery_tag,
              reason)
    outcome = _copy_then_ack(session, group, key, method, "dead", lambda: session.publish_confirmed(
        topology.DEAD_QUEUE, body, dead_properties(props, reason, queue=group.queue,
                                                   worker_type=group.worker_type)))
    return _ended(session, events, group, key, props, outcome, f"refused: {reason}")


def _over_delivery_limit(group, amqp_settings, session, events, ctx, key, method, props, body):
    """Dead-letter a task that has killed `delivery_limit` processes already, saying how
    the last one ended; return the outcome as _refused does. Running it again would not help.

    Deaths are counted by the supervisor, not read from x-delivery-count, which
    RabbitMQ 3 also raises for every return (a graceful stop, a recycle, a nack).
    """
    if not method.redelivered:  # a task that killed a process always comes back redelivered
        return None
    deaths, cause = ctx.graveyard.deaths(key) if ctx.graveyard else (0, None)
    limit = amqp_settings.delivery_limit
    if deaths < limit:
        return None
    reason = f"delivery limit {limit} reached: {deaths} processes died handling it; last: {cause}"
    log.error("task %s: %s; dead-lettering it", key, reason)
    count = (props.headers or {}).get("x-delivery-count", deaths)
    outcome = _copy_then_ack(session, group, key, method, "dead", lambda: session.publish_confirmed(
        topology.DEAD_QUEUE, body, dead_properties(
            props, reason, queue=group.queue, worker_type=group.worker_type, exit=cause,
            deaths=deaths, delivery_count=count)))
    return _ended(session, events, group, key, props, outcome, reason)


def _not_to_start(group, session, events, cancels, key, method, props, body):
    """Settle a task that must not start (cancelled: runtime/cancels.py; its deadline
    passed: expiry.py) without running it; return its outcome ("cancelled", "expired"),
    or None for a task to run (it is in hand then: cancels.hold)."""
    if cancels.hold(key):
        outcome = _settle_unrun(group, session, events, key, method, props, "cancelled",
                                "cancelled before it started")
        cancels.settled(key)
        return outcome
    late = expiry.expired_by(props.headers)
    if late is not None:
        return _settle_unrun(group, session, events, key, method, props, "expired",
                             expiry.reason(late))
    return None


def _settle_unrun(group, session, events, key, method, props, outcome, reason):
    """Ack a task taskqueue settles without running it, not for a failure of its own
    (`outcome`: expired, cancelled): said in a line, recorded in an event of that kind,
    and answered with a failure reply to whoever waits for it (Client.call fails now,
    not at its timeout). Returns `outcome`."""
    log.info("task %s (delivery %s) not run: %s", key, method.delivery_tag, reason)
    return _settled_by_taskqueue(group, session, events, key, method, props, outcome, reason)


def _settled_by_taskqueue(group, session, events, key, method, props, outcome, reason):
    """Ack a task taskqueue ends itself (expired, cancelled), its event of kind
    `outcome`, its failure reply; returns `outcome`."""
    session.ack(method.delivery_tag)
    events.add(outcome, key, group.worker_type, reason=reason, attempt=_attempt(props))
    return _answer_failure(session, group, key, props, outcome, reason)


def _cancel_running(group, session, events, cancels, key, method, props, elapsed):
    """Settle the running task `key`, cancelled: acked (not delivered again), a
    `cancelled` event, a failure reply, a settled record; its thread is stopped next."""
    reason = f"cancelled after {elapsed:.3f}s of running"
    log.warning("task %s (delivery %s) %s: acked; stopping its thread", key,
                method.delivery_tag, reason)
    _settled_by_taskqueue(group, session, events, key, method, props, "cancelled", reason)
    cancels.settled(key)


def _copy_then_ack(session, group, task, method, outcome, publish):
    """publish() the task's copy (its dead letter, its retry: confirmed), then ack the
    delivery; return `outcome`. A copy the broker refused (nacked as often as nacks.py
    tries: a full queue, most likely) is no lost broker: the delivery goes back to its
    queue instead, said in a warning, and comes again to be tried anew: nothing is lost,
    the process goes on; return "requeue"."""
    try:
        publish()
    except PublishNacked as exc:
        log.warning("task %s (delivery %s): %s; given back to %s: it comes again", task,
                    method.delivery_tag, exc, group.queue)
        session.nack(method.delivery_tag, requeue=True)
        return "requeue"
    session.ack(method.delivery_tag)
    return outcome


def _ended(session, events, group, task, props, outcome, reason, answered=False,
           dead=False):
    """A task ended without success (`outcome`: dead, raised, reject; requeue: given
    back): its event (failed when the plugin raised or rejected it, dead when
    taskqueue dead-lettered it: `dead`, or outcome dead; requeued), then its failure
    reply unless the plugin `answered` it. Returns `outcome`."""
    kind = "requeued" if outcome == "requeue" else \
        "dead" if dead or outcome == "dead" else "failed"
    events.add(kind, task, group.worker_type, reason=reason, attempt=_attempt(props))
    if answered:
        return outcome
    return _answer_failure(session, group, task, props, outcome, reason)


def _answer_failure(session, group, task, props, outcome, reason):
    """Send the failure reply (replies.failure) of a task that ended without an answer, to
    its reply_to when it has one that a reply may go to (replies.allowed, as
    TaskChannel.reply), so that whoever waits (Client.call, submit --wait) fails now,
    not at its timeout. Not for a task given back ("requeue": it comes again), nor once
    the session is gone (its settlement did not go: it comes again too). Sent on the
    reply connection (Session.reply), as a plugin's reply. Returns `outcome`."""
    if outcome == "requeue" or not props.reply_to:
        return outcome
    reply = failure_reply(props, reason, group.reply_queues)
    if reply is None:
        log.debug("task %s: no failure reply: its reply_to %r is not a reply queue", task,
                  props.reply_to)
        return outcome
    if not session.is_open:
        log.warning("task %s: failure reply not sent: the connection is gone", task)
        return outcome
    session.reply(*reply)
    log.debug("task %s: failure reply sent to %s: %s", task, props.reply_to, reason)
    return outcome


def _recycle_reason(group, done):
    if group.max_tasks and done >= group.max_tasks:
        return f"max_tasks {group.max_tasks} reached"
    if group.max_memory:
        rss = resident_mib()
        if rss > group.max_memory:
            return f"max_memory {group.max_memory} MiB exceeded ({rss:.0f} MiB resident)"
    return None


def resident_mib():
    """This process's resident memory now (not its peak), in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _start_consuming(group, session):
    """Declare what the worker needs and start its intake; (intake, prefetch).
    It consumes its type's high queue beside group.queue (priorities.py)."""
    queues = priorities.worker_queues(group.worker_type)
    session.declare_queue(topology.DEAD_QUEUE)
    for queue in queues:
        session.declare_queue(queue)
    # One hop (onehop.py): clients that name the type publish straight into its queues.
    problem = session.declare_onehop(
        worker_queues=[(queue, priorities.binding_key(queue)) for queue in queues])
    if problem:
        log.error("%s; tasks for %s come through %s and the dispatcher meanwhile",
                  problem, group.worker_type, topology.TASK_QUEUE)
    intake = Intake(session, queues, group.prefetch, _lookahead(group))
    return intake, intake.start()


def _lookahead(group):
    """The group's lookahead, or 0 (none) for a process that runs fewer tasks than the
    intake takes in advance (max_tasks below AHEAD_PREFETCH): it would give back, at
    every replacement, tasks it never meant to run, and on quorum queues each
    give-back counts toward the broker's delivery limit (RabbitMQ 3.10 dead-lettered a
    task of 40 run by `max_tasks: 1` processes that way). None either for a rate-limited
    type: a task held in advance would wait for its turn behind the one in hand (rategate.py)
    as a delivery unacked, which the broker's consumer timeout bounds."""
    if group.max_tasks is not None and group.max_tasks < AHEAD_PREFETCH:
        return 0
    if group.rate_limit is not None or group.rate_limit_per_host is not None:
        return 0
    return group.lookahead


def _finish(worker, session, hub_calls, ctx, code, events, cancels, teardown=True):
    """Leave: settle what is queued, report, close; `teardown`: call the plugin's (not
    while its thread still runs a cancelled task: it may hold what teardown needs)."""
    hub_calls.run_pending()  # settlements the last task's thread queued
    ctx.flush()
    events.close()
    cancels.close()
    try:
        if teardown:
            worker.teardown()
    except Exception:
        log.exception("teardown failed")
    # Closing requeues whatever was prefetched but not handled.
    session.close()
    return code


def _handle(worker, group, session, events, hub_calls, tasks, intake, cancels, key, method,
            props, body):
    """Run one task in a thread, in its span (tracing.py), and make sure it is settled;
    return (outcome, seconds). A task cancelled while it runs is settled as "cancelled"
    here, its thread still running (the caller stops it)."""
    span = tracing.task_span(group.worker_type, key, _attempt(props), props.headers)
    channel = TaskChannel(session, hub_calls, method.delivery_tag, props, group.reply_queues)
    started = time.monotonic()
    result = tasks.spawn(call_handler, worker, channel, method, props, body, span)
    # Past the lookahead, what is held in advance goes back to the queue (intake.py).
    long_at = started + intake.lookahead if intake.holds_ahead else None
    while not result.ready():
        cancels.wait(result, None if long_at is None else max(0.0, long_at - time.monotonic()))
        if cancels.hit.is_set() and not result.ready():
            hub_calls.run_pending()     # a settlement its thread queued goes first
            if channel.claim("cancelled"):
                elapsed = time.monotonic() - started
                _cancel_running(group, session, events, cancels, key, method, props, elapsed)
                span.end("cancelled")
                return "cancelled", elapsed
            cancels.hit.clear()     # settled by the plugin already: it ends as it is
        elif long_at is not None and not result.ready() and time.monotonic() >= long_at:
            intake.task_is_long()
            long_at = None
    error = result.get()
    elapsed = time.monotonic() - started
    # The plugin's ack (queued by its thread) goes to pika now, not after the bookkeeping:
    # the less time between a task's end and its ack, the less a lost connection redoes.
    hub_calls.run_pending()
    outcome = settle_handled(group, session, events, key, channel, method, props, body,
                             error, elapsed)
    span.end(outcome)
    return outcome, elapsed


def settle_handled(group, session, events, key, channel, method, props, body, error, elapsed):
    """Settle the task as the plugin left it (`error`: the traceback of what it raised,
    or None); return the outcome. In the hub's thread. The one place that decides what
    each way of leaving handle_task comes to: taskqueue.testing calls it too."""
    msg_id = props.message_id or "-"    # as the publisher wrote it (escaped in the log)
    if channel.settlement == "dead":
        log.error("task %s (delivery %s) given up by the plugin after %.3fs: %s; "
                  "dead-lettering it", msg_id, method.delivery_tag, elapsed, channel.dead_reason)
        return _dead_letter(group, session, events, key, method, props, body,
                            channel.dead_reason, "reject", answered=channel.replied)
    if channel.settlement == "retry":
        return _retry(group, session, events, key, method, props, body, explicit=True,
                      requested=channel.retry_delay, answered=channel.replied)
    if error is not None and channel.settlement is None and group.retry.max_retries:
        log.warning("task %s (delivery %s) raised after %.3fs:\n%s", msg_id, method.delivery_tag,
                    elapsed, logs.Lines(error))
        return _retry(group, session, events, key, method, props, body, explicit=False,
                      error=retries.last_line(error), answered=channel.replied)
    if error is not None and channel.settlement is None:
        log.error("task %s (delivery %s) raised after %.3fs; rejecting it to the dead-letter "
                  "queue:\n%s", msg_id, method.delivery_tag, elapsed, logs.Lines(error))
        channel.basic_reject(requeue=False)     # sent at once: this is the hub's thread
        return _ended(session, events, group, key, props, "raised",
                      f"raised {retries.last_line(error)}", answered=channel.replied)
    if error is not None:
        log.error("task %s (delivery %s) raised after %.3fs, once settled by basic_%s (left "
                  "so):\n%s", msg_id, method.delivery_tag, elapsed, channel.settlement,
                  logs.Lines(error))
    elif channel.settlement is None:
        log.warning("task %s (delivery %s): handle_task returned without settling it; acking",
                    msg_id, method.delivery_tag)
        channel.basic_ack()
    if channel.outcome == "reject":   # dead-lettered by the broker
        _ended(session, events, group, key, props, "reject",
               f"rejected by the plugin (basic_{channel.settlement} without requeue)",
               answered=channel.replied)
    elif channel.outcome == "requeue":
        events.add("requeued", key, group.worker_type, reason="given back by the plugin",
                   attempt=_attempt(props))
    return channel.outcome


def _retry(group, session, events, key, method, props, body, explicit, requested=None,
           error=None, answered=False):
    """Publish the task again through the delay chain, or dead-letter it once its
    retries are spent; then ack this delivery (after the broker confirmed the copy:
    a crash in between redelivers it, nothing is lost; a copy it refused gives the
    delivery back: _copy_then_ack). Returns the outcome. A task dead-lettered gets a
    failure reply unless the plugin `answered` it; a retried one none (not yet)."""
    task = key      # task_key: as every event and line of the task names it
    done, problem = retries.read_count(props.headers)
    decision = retries.decide(group.retry, done, explicit, requested, error, random.random(),
                              problem)
    if isinstance(decision, retries.GiveUp):
        log.error("task %s: %s; dead-lettering it", task, decision.reason)
        # A header that held no count stays as it came (amqp_safe), for whoever looks into it.
        counted = {} if done is None else {"retries": done}
        return _dead_letter(group, session, events, task, method, props, body,
                            decision.reason, "reject" if explicit else "raised",
                            answered=answered, **counted)
    copy = pikaparams.copy_properties(props)
    copy.headers = pikaparams.amqp_safe(without_broker_headers(props.headers or {}))
    copy.headers[retries.RETRIES_HEADER] = done + 1
    outcome = _copy_then_ack(session, group, task, method, "retry", lambda: session.publish_delayed(
        group.queue, group.worker_type, body, copy, decision.delay))
    if outcome == "retry":
        log.info("task %s: retry %d in %.1fs", task, done + 1, decision.delay)
        events.add("retried", task, group.worker_type, attempt=done + 1, delay=decision.delay,
                   reason=error or ("retry() by the plugin" if explicit else None))
    else:
        events.add("requeued", task, group.worker_type, attempt=done + 1,
                   reason="the broker refused the retry's copy")
    return outcome


def _dead_letter(group, session, events, key, method, props, body, reason, outcome,
                 answered=False, **details):
    """Publish the task's dead letter (reason in x-taskqueue-reason, `details` as more
    headers), confirmed, then ack the delivery (_copy_then_ack); its `dead` event and,
    unless the plugin `answered` it, its failure reply. Returns the outcome."""
    outcome = _copy_then_ack(session, group, key, method, outcome, lambda: session.publish_confirmed(
        topology.DEAD_QUEUE, body, dead_properties(props, reason, queue=group.queue,
                                                   worker_type=group.worker_type, **details)))
    return _ended(session, events, group, key, props, outcome, reason, answered=answered,
                  dead=True)


def call_handler(worker, channel, method, props, body, span=tracing.NO_SPAN):
    """Runs in a task thread: returns None, or the formatted traceback of what it raised
    (taskqueue.testing runs handle_task through it too)."""
    try:
        with span.current():
            worker.handle_task(channel, method, props, body)
        return None
    except BaseException:
        return traceback.format_exc()


def call_plugin_hook(worker, hook, group):
    """Call the plugin's `hook` (setup, teardown); what it raises becomes a PluginError
    naming the plugin and the hook (taskqueue.testing calls it too)."""
    try:
        getattr(worker, hook, lambda: None)()
    except Exception as exc:
        raise PluginError(
            f"plugin {group.worker_type!r}: {hook}() failed: {type(exc).__name__}: {exc}") from exc
