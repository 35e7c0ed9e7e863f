"""Submitting tasks from application code: `Client`, and what a task looks like on the wire.

    from taskqueue.client import Client
    with Client.from_config("/etc/taskqueue/config.ini") as client:
        task_id = client.submit("resize", {"path": "a.png"})
        reply = client.call("echo", {"x": 1}, timeout=10)

This module is the one owner of what a submitted task is: `onehop_message`,
what the Client publishes (one hop, onehop.py: the broker routes it to
`worker_<type>` by its routing key, or to `taskqueue` when no such queue is
bound yet), and `task_message`, the envelope for `taskqueue` (the
specification's protocol). The command line's `submit` and `submit --file`
build their messages here too.

Threads: pika's BlockingConnection is not thread-safe. submit() without a delay
goes through one connection per Client (per process, after os.fork()), owned by an
I/O thread (broker/submitline.py): every thread's tasks are published on it with
their confirms in flight together, each caller waiting only for its own, and their
`submitted` events go in one message per few milliseconds. Many threads submitting
share the per-message cost instead of each paying a round trip (issue 26). The I/O
thread is a daemon, ends on close() or when the Client is collected, and under
gevent's monkey-patching is a greenlet, as the callers are.

The other calls (submit with a delay, call, cancel, publish) keep one
connection per thread (a threading.local), opened on the thread's first call and
kept between calls: they need no hand-over, and call() waits for its reply on it
(submit_many opens a connection of its own per call).
Under gevent with monkey-patching, threading.local is greenlet-local and the same
holds per greenlet; the sockets are gevent's, so waiting for the broker yields.

A connection found closed (by the broker, the network, an idle timeout) is
opened again on the next call, trying each broker of the config in turn.
A publish interrupted by a lost connection, before its confirm, is sent once
more on a new connection: at least once, as every confirm-based publisher is.
A publish the broker nacked (did not take) is sent again a bounded number of
times before PublishRefused says so (nacks.py).
"""
import dataclasses
import logging
import os
import threading
import time
import weakref

from taskqueue import redact
from taskqueue.broker import blocking, cancellog, fielddecode, pikaparams
from taskqueue.broker.clientevents import SubmittedEvents
from taskqueue.broker.onehopwindow import onehop_window
from taskqueue.broker.submitline import SubmitLine
# Re-exported: what a task's properties are is the broker layer's (the scheduler's too).
from taskqueue.broker.pikaparams import steered, task_properties  # noqa: F401
from taskqueue.errors import (BrokerUnreachable, PartlySubmitted, PublishNacked, PublishRefused,
                              SessionClosed, TaskFailed, TaskqueueError, TopologyError,
                              UndecodableHeaders)
from taskqueue.host import config, tracing
from taskqueue.protocol import (cancels, expiry, nacks, onehop, priorities, replies as reply_rule,
                                topology, tracecontext, workitems)
from taskqueue.runtime import plugins

#: What applications import from here (the errors are errors.py's, named here too).
__all__ = ["Client", "ConnectionLost", "BrokerUnreachable", "PartlySubmitted", "PublishRefused",
           "PublishNacked", "TaskFailed", "TaskqueueError", "TopologyError",
           "UndecodableHeaders",
           "task_message", "onehop_message", "task_properties", "trace_headers"]

log = logging.getLogger(__name__)

#: Seconds one call may wait for the broker once connected (channel open, declares,
#: confirm, close), all together; past it ConnectionLost says so (blocking.answered_within).
#: Connecting takes at most [amqp] connect_timeout per broker of the list.
BROKER_TIMEOUT = pikaparams.REPLY_TIMEOUT
#: Longest slice of waiting for a reply, so a lost connection is noticed in time.
REPLY_POLL = 1.0

#: The connection was lost, or no broker of the list could be reached.
ConnectionLost = SessionClosed


# -- what goes on the wire ---------------------------------------------------------

def trace_headers(traceparent=None, tracestate=None):
    """The trace context a task carries (tracecontext.py): the one given, checked
    (ValueError saying what is wrong); else, when OpenTelemetry is installed and a span
    is current in this thread, that span's; else none ({})."""
    if traceparent is None and tracestate is None:
        return tracing.current_headers()
    return tracecontext.checked(traceparent, tracestate)


def task_message(worker_type, workitem, message_id=None, trace=None):
    """(body, properties) of the task for `worker_type` submitted to `taskqueue`: the
    JSON envelope and task_properties(). ValueError saying what is wrong with the type
    or workitem."""
    _check_type(worker_type)
    body = _encoded(worker_type, workitems.envelope, worker_type, workitem)
    return body, task_properties(message_id, trace)


def onehop_message(worker_type, workitem, message_id=None, trace=None, priority=None,
                   expires=None):
    """(body, properties) of the one-hop task for `worker_type`
    (docs/02-messages-and-wire-format.md, "One hop"): the workitem as JSON, which is
    what the worker receives, and task_properties() with the worker_type header;
    `priority` (0-9, priorities.py) and `expires` (seconds from now, expiry.py) when
    given. ValueError saying what is wrong with the type, workitem, priority or expires."""
    _check_type(worker_type)
    priorities.checked(priority)
    if expires is not None:
        expiry.checked_seconds(expires)
    body = _encoded(worker_type, workitem_bytes, workitem)
    props = pikaparams.onehop_properties(task_properties(message_id, trace), worker_type)
    return body, steered(props, priority, expires)


def _check_type(worker_type):
    from taskqueue.protocol.routing import TYPE_PATTERN, TYPE_RULE
    if not isinstance(worker_type, str) or not TYPE_PATTERN.match(worker_type):
        raise ValueError(f"worker type {worker_type!r:.100} is not {TYPE_RULE}")


def workitem_bytes(workitem):
    """`workitem` as the JSON bytes a one-hop task carries; ValueError (TypeError for
    what JSON has no value for) as workitems.dumps, nesting too deep included."""
    try:
        return workitems.dumps(workitem)
    except RecursionError:
        raise ValueError("not usable JSON: nested too deeply") from None


def _encoded(worker_type, encode, *args):
    try:
        return encode(*args)
    except (TypeError, ValueError) as exc:   # a set, NaN, Infinity, nested too deeply
        problem = str(exc) if str(exc).startswith("not usable JSON") else f"not JSON ({exc})"
        raise ValueError(f"workitem for {worker_type}: {problem}") from None


# -- one thread's connection -------------------------------------------------------

#: Stands for the delay chain among the queues a connection declared.
DELAY_CHAIN = "taskqueue.delay.*"
#: Stands for the one-hop exchanges (and taskqueue, bound to the alternate one).
ONE_HOP = onehop.EXCHANGE


class _Link:
    """One BlockingConnection and its confirm-mode channel, used by one thread only."""

    def __init__(self, settings, name):
        self.settings = settings
        self.name = name
        # The connection lives in a box of its own, so that a finalizer can close it
        # once the thread (and with its locals this link) is gone, without keeping
        # the link alive.
        self.box = {"connection": None}
        self.channel = None
        self.declared = set()       # queues declared on this connection
        self.found = None           # settings as the vhost's queues are declared (declaring)
        self.replies = {}           # correlation id -> Reply, for call()
        self.events = None          # clientevents.SubmittedEvents of this connection
        self.consuming_replies = False

    @property
    def connection(self):
        return self.box["connection"]

    @connection.setter
    def connection(self, value):
        self.box["connection"] = value

    @property
    def is_open(self):
        return bool(self.connection and self.connection.is_open and self.channel.is_open)

    def ensure_open(self):
        if self.is_open:
            try:    # notice a close the broker sent since the last call
                self.connection.process_data_events(time_limit=0)
            except blocking.CONNECTION_LOST:
                pass
        if self.is_open:
            return
        self.drop()
        self.connection = blocking.blocking_connect(self.settings, self.name, BROKER_TIMEOUT)
        with blocking.answered_within(self.connection, BROKER_TIMEOUT, "opening a channel",
                                      self.settings):
            self.channel = self.connection.channel()
            self.channel.confirm_delivery()
        self.events = SubmittedEvents(self.connection, self.settings, self.name)

    @property
    def declaring(self):
        """The settings this connection declares queues with: the Client's, with the
        queue type `taskqueue` has when a pool configured otherwise declared it (the
        queues are used as they are: blocking.settings_as_found). Once per connection."""
        if self.found is None:
            self.found = blocking.settings_as_found(self.connection, self.settings)
        return self.found

    def declare(self, queue):
        if queue not in self.declared:
            blocking.blocking_declare(self.channel, self.declaring, queue)
            key = priorities.binding_key(queue)
            if key:     # bound as every declarer of a worker queue binds it (one hop)
                blocking.declare_onehop_exchanges_blocking(self.channel, [(queue, key)])
            self.declared.add(queue)

    def publish_onehop(self, worker_type, body, props):
        """To the one-hop exchange, its topology declared once per connection."""
        if ONE_HOP not in self.declared:
            blocking.declare_onehop_blocking(self.channel, self.declaring)
            self.declared.add(ONE_HOP)
        blocking.blocking_publish_onehop(self.channel, worker_type, body, props)

    def publish_delayed(self, worker_type, body, props, seconds):
        """Through the delay chain, declared once per connection (DELAY_CHAIN in `declared`)."""
        try:
            blocking.publish_delayed_blocking(self.channel, self.declaring, worker_type, body,
                                              props, seconds,
                                              declare=DELAY_CHAIN not in self.declared)
        except Exception:
            self.declared.discard(DELAY_CHAIN)   # a returned task: declare it all again next time
            raise
        self.declared.add(DELAY_CHAIN)

    def consume_replies(self):
        """Consume direct reply-to on this channel: what RabbitMQ requires before a
        publish with reply_to amq.rabbitmq.reply-to. Once per connection."""
        if self.consuming_replies:
            return
        replies = self.replies   # not self: the connection must not keep the link alive

        def on_reply(channel, method, props, body):
            if props.correlation_id in replies:     # a late reply to a call that timed out is not
                problem = fielddecode.problem_of(props)
                if problem:     # a reply's headers are not read: its body is the answer
                    log.warning("the reply to task %s came with headers that were not decoded "
                                "(%s); its body is returned", props.correlation_id, problem)
                    replies[props.correlation_id] = Reply(body)
                else:
                    replies[props.correlation_id] = Reply(
                        body, reply_rule.failure_reason(props.headers))
        self.channel.basic_consume(topology.DIRECT_REPLY_TO, on_reply, auto_ack=True)
        self.consuming_replies = True

    def drop(self):
        """Forget the connection (closing it if it is still open)."""
        _close_quietly(self.connection)
        self.connection = self.channel = self.found = self.events = None
        self.declared = set()
        self.consuming_replies = False


@dataclasses.dataclass(frozen=True)
class Reply:
    """What came back to call(): the body, and the reason when it is a failure reply."""
    body: bytes
    failure: str = None


def _close_quietly(connection):
    blocking.close_within(connection, BROKER_TIMEOUT)


# -- the client ----------------------------------------------------------------------

class Client:
    """Submit tasks to taskqueue; see the module's docstring. `url`: amqp:// or amqps://
    URLs (comma-separated: tried in turn); other keywords: the [amqp] options of the
    config (host, port, vhost, user, password, heartbeat, queue_type, delivery_limit...)."""

    def __init__(self, url=None, *, name="taskqueue client", **options):
        known = {f.name for f in dataclasses.fields(config.AmqpSettings)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"Client: unknown option(s) {', '.join(unknown)}; "
                            f"the [amqp] options are {', '.join(sorted(known))}")
        if url is not None:
            url = config.parse_amqp_url(url)
        self.settings = config.AmqpSettings(url=url, **options)
        # Never quoted by the errors we raise, nor in the application's log lines.
        for password in [options.get("password")] + config.url_passwords(url or ""):
            if password != config.DEFAULT_PASSWORD:
                redact.remember(password)
        self.name = name
        self._local = threading.local()
        self._links = weakref.WeakSet()     # every thread's, for close()
        self._links_lock = threading.Lock()
        self._line = None                   # submit()'s, made by its first call
        self._line_lock = threading.Lock()

    @classmethod
    def from_config(cls, path, name="taskqueue client"):
        """A Client for the [amqp] section of the taskqueue config file at `path`;
        ConfigError naming the file, section and option if it is not valid."""
        return cls.for_settings(config.load(path, plugins.discover(), check_users=False).amqp,
                                name)

    @classmethod
    def for_settings(cls, settings, name="taskqueue client"):
        """A Client for a config.AmqpSettings (the command line's)."""
        client = cls(name=name)
        client.settings = settings
        return client

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        """Close the connections of every thread. Call it when no thread is using the
        client any more (pika's connections are not thread-safe); a later call opens a
        new connection."""
        with self._links_lock:
            links = list(self._links)
        for link in links:
            link.drop()
        line, self._line = self._line, None
        if line is not None and line.pid == os.getpid():
            self._line_finalizer.detach()
            line.close()

    def _submit_line(self):
        """submit()'s SubmitLine: this process's (after os.fork(), the child makes its own
        and leaves the parent's alone), open (a new one after close())."""
        line = self._line
        if line is not None and line.usable:
            return line
        if line is not None and line.pid != os.getpid():
            self._line_lock = threading.Lock()   # perhaps held by a thread of the parent
        with self._line_lock:
            line = self._line
            if line is None or not line.usable:
                line = self._line = SubmitLine(self.settings, f"{self.name} (submit)",
                                               BROKER_TIMEOUT)
                # The thread holds the line, not the client: it ends when the client goes.
                self._line_finalizer = weakref.finalize(self, line.close, False)
                self._line_finalizer.atexit = False
            return line

    def _link(self):
        link = getattr(self._local, "link", None)
        if link is None:
            link = self._local.link = _Link(self.settings, self.name)
            # When the thread ends, its local goes and with it the link: close its connection.
            weakref.finalize(link, _close_boxed, link.box)
            with self._links_lock:
                self._links.add(link)
        return link

    def _with_connection(self, action, what):
        """action(link) (a publish: `what`) on this thread's open connection; once more
        on a new connection if it was lost before the broker answered; again, a bounded
        number of times, while the broker nacks it (nacks.py). A broker that does not
        answer within BROKER_TIMEOUT is not tried again: ConnectionLost says so."""
        return nacks.retry(lambda: self._connected(action, what), PublishNacked)

    def _connected(self, action, what):
        link = self._link()
        for attempt in (1, 2):
            try:
                link.ensure_open()
                with blocking.answered_within(link.connection, BROKER_TIMEOUT, what,
                                              self.settings):
                    return action(link)
            except blocking.CONNECTION_LOST as exc:
                link.drop()
                _raise_if_undecodable(exc, self.settings, what)
                if attempt == 2:
                    raise ConnectionLost(f"connection to {pikaparams.describe(self.settings)} "
                                         f"lost: {exc!r}") from None
                log.info("connection lost (%r); connecting again", exc)
            except PublishRefused:
                link.declared.clear()   # a returned message: perhaps its queue was deleted
                raise

    # -- submitting ----------------------------------------------------------------

    def submit(self, worker_type, workitem, delay=None, *, priority=None, expires=None,
               traceparent=None, tracestate=None):
        """Submit one task; return its message id once the broker confirmed it.
        `delay`: seconds before a worker may see it (rounded up; see delays.py).
        `priority`: 0 (the default) to 9; 5 and above go ahead of a backlog of lower
        ones (priorities.py). `expires`: seconds from now; a task not started by then is
        never started, and is recorded as expired (expiry.py); with a delay, longer than it.
        `traceparent`, `tracestate`: the W3C trace context the task carries (default:
        the current OpenTelemetry span's, when there is one; trace_headers).
        ValueError for a bad type, workitem, delay, priority, expires or trace context
        (nothing sent), PublishRefused if the broker did not take it, ConnectionLost if
        no broker could be reached or the broker did not answer within BROKER_TIMEOUT."""
        if delay is not None:
            if isinstance(delay, bool) or not isinstance(delay, (int, float)):
                raise ValueError(f"delay {delay!r}: expected a number of seconds")
            if expires is not None:
                expiry.checked_seconds(expires, delay)
        body, props = onehop_message(worker_type, workitem,
                                     trace=trace_headers(traceparent, tracestate),
                                     priority=priority, expires=expires)
        sent = time.time()
        if delay is None:   # its `submitted` event is the line's
            return self._submit_line().submit(worker_type, body, props, sent)
        # Through the delay chain to taskqueue, as before one hop: the dispatcher's
        # hop costs nothing beside a delay of a second or more.
        self._with_connection(lambda link: link.publish_delayed(
            worker_type, body, props, delay), f"publishing the task for {worker_type}")
        self._submitted(props, worker_type, sent, delay)
        return props.message_id

    def _submitted(self, props, worker_type, sent, delay=None):
        """Its `submitted` event (events.py) at `sent` (when it was published), on this
        thread's connection, unconfirmed."""
        events = self._link().events
        if events is not None:
            events.add(props.message_id, worker_type, delay,
                       tracecontext.trace_id(props.headers), sent)
            events.flush()

    def publish(self, queue, body, props):
        """Publish a message made elsewhere (dead requeue, a raw client) to `queue`,
        declared as taskqueue declares it, and return once the broker confirmed it."""
        def publish(link):
            link.declare(queue)
            blocking.blocking_publish_confirmed(link.channel, queue, body, props)
        self._with_connection(publish, f"publishing to {queue}")

    def cancel(self, *task_ids):
        """Cancel the tasks of `task_ids` (what submit returned): one not started yet never
        starts; a running one is settled and its process replaced (its thread gets
        worker.TaskCancelled); on every host, for 13 days (cancels.RETENTION, beyond the
        longest delay). Each is recorded as `cancelled`, not delivered again. Returns once
        the broker confirmed a record of each in the stream taskqueue_cancels. Says nothing
        of whether a task exists or has finished (`taskqueue cancel` does): a cancel of a
        task that finished stays pending in `taskqueue status` until it ages out.
        ValueError for an id that cannot name a task (nothing sent); PublishRefused,
        ConnectionLost as submit; TopologyError if the broker refuses the stream."""
        if not task_ids:
            raise ValueError("cancel: expected at least one task id")
        for task_id in task_ids:
            cancels.checked_id(task_id)

        def publish(link):
            if cancels.STREAM not in link.declared:
                cancellog.declare_stream(link.connection)
                link.declared.add(cancels.STREAM)
            for task_id in task_ids:
                cancellog.publish_cancel(link.channel, task_id, self.name)
        self._with_connection(publish, f"publishing {len(task_ids)} cancel(s) to "
                                       f"{cancels.STREAM}")

    def submit_many(self, worker_type, items, *, priority=None, expires=None,
                    traceparent=None, tracestate=None):
        """Submit a task for each workitem of `items` with many confirms in flight;
        return their message ids, in order. Every item is checked first: a bad one
        raises ValueError naming its index, and nothing is sent. Every task carries the
        same priority, expiry (each counted from when its message is made, just before
        the publishing starts) and trace context (as for submit). ConnectionLost (its
        BrokerUnreachable) if no broker could be reached: nothing was sent.
        PartlySubmitted, with the ids the broker confirmed, if it refused one or the
        connection went."""
        priorities.checked(priority)
        if expires is not None:
            expiry.checked_seconds(expires)
        trace = trace_headers(traceparent, tracestate)
        messages = []
        for index, workitem in enumerate(items):
            try:
                messages.append(onehop_message(worker_type, workitem, trace=trace,
                                               priority=priority, expires=expires))
            except ValueError as exc:
                raise ValueError(f"item {index}: {exc}; nothing was submitted") from None
        if not messages:
            return []
        return _submit_window(self.settings, self.name, worker_type, messages)

    # -- calling -------------------------------------------------------------------

    def call(self, worker_type, workitem, timeout, *, priority=None, expires=None,
             traceparent=None, tracestate=None):
        """Submit a task and return the body (bytes) of the worker's reply; TimeoutError
        if none came within `timeout` seconds; TaskFailed (.task_id, .reason) when the
        task ended without a reply (it raised and was dead-lettered, was rejected, ran
        out of retries, expired, was cancelled: the worker's failure reply, replies.py).
        Uses RabbitMQ's direct reply-to: the reply comes back on this thread's
        connection, and no queue is declared for it. `priority`, `expires`,
        `traceparent`, `tracestate`: as for submit."""
        body, props = onehop_message(worker_type, workitem,
                                     trace=trace_headers(traceparent, tracestate),
                                     priority=priority, expires=expires)
        props.reply_to = topology.DIRECT_REPLY_TO
        started, sent = time.monotonic(), time.time()

        def publish(link):
            link.consume_replies()
            link.replies[props.correlation_id] = None
            link.publish_onehop(worker_type, body, props)
            return link
        link = self._with_connection(publish, f"publishing the task for {worker_type}")
        self._submitted(props, worker_type, sent)
        try:
            return self._wait_reply(link, props.correlation_id, started + timeout, worker_type,
                                    timeout)
        finally:
            link.replies.pop(props.correlation_id, None)

    def _wait_reply(self, link, correlation_id, deadline, worker_type, timeout):
        while link.replies.get(correlation_id) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply from {worker_type} to task {correlation_id} "
                                   f"within {timeout:g} s")
            try:
                link.connection.process_data_events(time_limit=min(REPLY_POLL, left))
            except blocking.CONNECTION_LOST as exc:
                link.drop()
                _raise_if_undecodable(exc, self.settings,
                                      f"waiting for the reply to task {correlation_id}")
                raise ConnectionLost(f"connection lost while waiting for the reply to task "
                                     f"{correlation_id} (it was submitted): {exc!r}") from None
        reply = link.replies[correlation_id]
        if reply.failure is not None:
            raise TaskFailed(correlation_id, reply.failure, worker_type)
        return reply.body


def _raise_if_undecodable(exc, settings, what):
    """UndecodableHeaders when the connection was lost because pika could not decode what
    the broker sent (a hostile reply's headers, say). The Client leaves pika's decoders
    as shipped, so that the application's own use of pika is unchanged (fielddecode.py
    is the daemons'): that call fails, its connection is closed already, the next call
    opens another."""
    cause = blocking.undecodable(exc)
    if cause:
        raise UndecodableHeaders(
            f"{what}: pika cannot decode a message the broker sent on the connection to "
            f"{pikaparams.describe(settings)} (its headers, most likely: nested too deep, a "
            f"timestamp past the year 9999): {cause}; that connection is closed") from None


def _close_boxed(box):
    _close_quietly(box["connection"])


def _submit_window(settings, name, worker_type, messages):
    """Publish `messages` [(body, props)] for `worker_type`, one hop, on a blocking
    connection of their own, up to confirms.WINDOW unconfirmed; the message ids, in order."""
    ids = [None] * len(messages)
    refusals = []

    def on_settled(index, problem):     # in the connection's I/O loop
        if problem is None:
            ids[index] = messages[index][1].message_id
        else:
            refusals.append((index, problem))
    error = None
    try:
        with onehop_window(settings, f"{name} (submit_many)", on_settled,
                           timeout=BROKER_TIMEOUT) as window:
            for index, (body, props) in enumerate(messages):
                if refusals:
                    break
                window.publish(worker_type, body, props, index)
            window.flush()
    except BrokerUnreachable:
        raise   # no broker could be reached: nothing was sent, as for submit
    except TaskqueueError as exc:
        error = str(exc)
    if refusals:
        index, why = min(refusals)
        error = f"item {index}: {why}"
    if error:
        confirmed = sum(1 for i in ids if i is not None)
        raise PartlySubmitted(f"{error} ({confirmed} of {len(messages)} tasks confirmed)", ids)
    return ids
