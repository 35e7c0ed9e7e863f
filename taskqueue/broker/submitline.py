"""Client.submit's one connection: an I/O thread that publishes the one-hop tasks of
every calling thread on it, their confirms in flight together, each caller waiting
only for its own (issue 26: a connection per thread, each waiting a round trip per
submit, could not use 16 threads: the client and the broker were CPU-bound on the
cost of each message).

A caller queues its task and wakes the I/O thread (BlockingConnection's one
thread-safe method, add_callback_threadsafe, or an Event while no connection is
open), then waits on its own Event. The I/O thread publishes what is queued,
serves the connection (the confirms come as callbacks, which settle the callers'
tasks at once), and sends the `submitted` events of the tasks confirmed in one
message per EVENTS_DELAY instead of one per task.

What the Client promised per thread holds per task: a task returns once confirmed;
one interrupted by a lost connection is published once more on a new connection
(at least once); a nacked one is tried again as nacks.py says, then PublishNacked;
a returned one is PublishRefused, and the topology is declared again before the
next publish; a task with no confirm `timeout` seconds after its publish fails
(SessionClosed, "no reply ... in <timeout>s"), with every other task in flight on
that connection, which is given up; a connection that cannot be opened fails the
tasks waiting for it with its error (BrokerUnreachable...).

The I/O thread is a daemon (a greenlet under gevent's monkey-patching), holds no
reference to the Client, and ends on close(). After os.fork() the child's Client
makes a SubmitLine of its own (`pid`); the parent's is left untouched (closing it
would close the parent's connection).
"""
import atexit
import collections
import logging
import os
import threading
import time
import weakref

import pika.exceptions

from taskqueue.broker import blocking, pikaparams
from taskqueue.broker.clientevents import SubmittedEvents
from taskqueue.errors import PublishNacked, PublishRefused, SessionClosed, TaskqueueError
from taskqueue.protocol import nacks, onehop, priorities, tracecontext
from taskqueue.protocol.confirmledger import ConfirmLedger
from taskqueue.protocol.topology import TASK_QUEUE, unroutable_onehop, worker_queue

log = logging.getLogger(__name__)

#: Longest wait of the I/O loop with nothing due (s); heartbeats are served meanwhile.
IDLE_POLL = 1.0
#: Seconds a confirmed task's `submitted` event waits for others to share its message.
EVENTS_DELAY = 0.01
#: Seconds between a caller's checks that the I/O thread is still there.
CALLER_POLL = 1.0
#: Seconds close() waits for the I/O thread beyond closing its connection.
JOIN_MARGIN = 1.0
#: Seconds the process's exit waits for each open line (an application that never
#: called Client.close()): its last `submitted` events and its connection's close.
EXIT_WAIT = 1.0

#: The lines of this process, closed at its exit (_close_at_exit).
_open_lines = weakref.WeakSet()


class _Task:
    """One submit: what to publish, and how it ended (`done`, `error`)."""
    __slots__ = ("worker_type", "body", "props", "sent", "done", "error", "tries", "resent",
                 "deadline")

    def __init__(self, worker_type, body, props, sent):
        self.worker_type, self.body, self.props, self.sent = worker_type, body, props, sent
        self.done = threading.Event()
        self.error = None
        self.tries = 0          # publishes the broker nacked, for nacks.py
        self.resent = False     # published again after a lost connection
        self.deadline = None

    @property
    def what(self):
        return f"publishing the task for {self.worker_type}"


class SubmitLine:
    """One connection named `name`, served by a daemon thread, for many threads' submits.
    `timeout`: seconds the broker has to answer (a confirm, a declare, a close)."""

    def __init__(self, settings, name, timeout):
        self.settings = settings
        self.name = name
        self.timeout = timeout
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._queued = collections.deque()   # tasks to publish, guarded by _lock
        self._wake_pending = False           # a wake-up is on its way (_lock)
        self._work = threading.Event()       # wakes the thread while no connection is open
        self._closing = False
        self._connection = None
        self._channel = None                 # blocking.ConfirmingChannel
        self._declarer = None                # a BlockingChannel, for the declarations
        self._events = None
        self._events_since = None            # when the oldest unsent event was added
        self._ledger = ConfirmLedger()       # published tasks awaiting their confirm
        self._retries = []                   # (when, task): nacked, to publish again
        self._redeclare = True
        self._thread = threading.Thread(target=self._run, name=f"{name} I/O",
                                         daemon=True)
        self._thread.start()
        _open_lines.add(self)

    @property
    def usable(self):
        """False once closed, in a forked child, or if the I/O thread ended."""
        return not self._closing and self.pid == os.getpid() and self._thread.is_alive()

    # -- the callers' side ---------------------------------------------------------

    def submit(self, worker_type, body, props, sent):
        """Publish a one-hop task; return once the broker confirmed it. Raises as the
        module's docstring says."""
        task = _Task(worker_type, body, props, sent)
        with self._lock:
            self._queued.append(task)
            wake, self._wake_pending = not self._wake_pending, True
        if wake:
            self._wake()
        while not task.done.wait(CALLER_POLL):
            if not self._thread.is_alive() and not task.done.is_set():
                raise SessionClosed(f"{task.what}: the client's I/O thread ended")
        if task.error is not None:
            raise task.error
        return props.message_id

    def _wake(self):
        self._work.set()
        connection = self._connection
        if connection is not None:
            try:
                connection.add_callback_threadsafe(_nothing)   # process_data_events returns
            except Exception:   # closed meanwhile: the thread drains the queue before it waits
                pass

    def close(self, wait=True):
        """Fail what is still queued, close the connection and end the thread (waiting
        for it with `wait`: True, or at most that many seconds). A no-op in a forked
        child: the connection is the parent's."""
        if self.pid != os.getpid():
            return
        self._closing = True
        self._wake()
        if wait and self._thread is not threading.current_thread():
            self._thread.join(self.timeout + JOIN_MARGIN if wait is True else wait)

    # -- the I/O thread --------------------------------------------------------------

    def _run(self):
        try:
            while not self._closing:
                if self._connection is None and not self._open_when_needed():
                    continue
                try:
                    self._publish_queued()
                    self._serve()
                except blocking.CONNECTION_LOST as exc:
                    self._lost(exc)
        except Exception as exc:    # a bug: no caller may wait for ever on it
            log.exception("the submit I/O thread of %r failed", self.name)
            self._fail_all(SessionClosed(f"the client's I/O thread failed: {exc!r}"))
        finally:
            self._closing = True
            self._fail_all(SessionClosed("the client was closed"))
            self._flush_events()
            blocking.close_within(self._connection, self.timeout)
            self._connection = None

    def _open_when_needed(self):
        """Open the connection if a task waits; True once open. Without work, wait for
        some. A connection that cannot be opened fails the tasks waiting for it."""
        self._work.clear()
        if not (self._queued or self._retries or len(self._ledger)):
            self._work.wait(IDLE_POLL)
            return False
        try:
            self._open()
            return True
        except blocking.CONNECTION_LOST as exc:
            self._drop()
            self._fail_all(SessionClosed(f"connection to {pikaparams.describe(self.settings)} "
                                         f"lost: {exc!r}"))
        except TaskqueueError as exc:   # BrokerUnreachable, no answer, TopologyError
            self._drop()
            self._fail_all(exc)
        return False

    def _open(self):
        connection = blocking.blocking_connect(self.settings, self.name, self.timeout)
        self._connection = connection
        with blocking.answered_within(connection, self.timeout, "opening a channel",
                                      self.settings):
            self._declarer = connection.channel()
            self._channel = blocking.ConfirmingChannel(connection)
            self._channel.enable_confirms(self._on_confirm, self._on_return)
            # Its stream declared now: a flush only publishes, it never waits.
            self._events = SubmittedEvents(connection, self.settings, self.name)
            self._events.prepare()
        self._ledger = ConfirmLedger()
        self._redeclare = True

    def _declare(self, task):
        if self._redeclare:
            with blocking.answered_within(self._connection, self.timeout, task.what,
                                          self.settings):
                blocking.declare_onehop_blocking(
                    self._declarer, blocking.settings_as_found(self._connection, self.settings))
            self._redeclare = False

    def _publish_queued(self):
        with self._lock:
            tasks, self._queued = self._queued, collections.deque()
            self._wake_pending = False
        now = time.monotonic()
        due = [task for when, task in self._retries if when <= now]
        if due:
            self._retries = [(when, task) for when, task in self._retries if when > now]
        pending = collections.deque(due + list(tasks))
        try:
            while pending:
                task = pending[0]
                try:
                    self._declare(task)
                except TaskqueueError as exc:   # TopologyError, no answer: this task's
                    self._settle(pending.popleft(), exc)
                    continue
                self._publish(task)
                pending.popleft()
        except blocking.CONNECTION_LOST as exc:
            task = pending[0]       # interrupted: once more on the next connection
            if task.resent:
                self._settle(pending.popleft(), self._lost_error(exc))
            task.resent = True
            raise
        finally:
            with self._lock:
                self._queued.extendleft(reversed(pending))

    def _publish(self, task):
        routing_key = priorities.routing_key(task.worker_type, task.props.priority)
        # Published first: a publish that raises is not in the ledger, its caller's
        # loop puts it back (_publish_queued).
        self._channel.publish(routing_key, task.body, task.props, exchange=onehop.EXCHANGE,
                              mandatory=True)
        task.deadline = time.monotonic() + self.timeout
        self._ledger.sent(task, (routing_key, task.props.message_id, task.body))

    def _serve(self):
        """Serve the connection until woken, or something falls due: a retry, the
        events' message, the oldest confirm's deadline."""
        now = time.monotonic()
        due = [now + IDLE_POLL]
        if self._retries:
            due.append(min(when for when, _ in self._retries))
        if self._events_since is not None:
            due.append(self._events_since + EVENTS_DELAY)
        if self._ledger:   # a confirm coming in does not end the wait: its event must not wait
            due.append(now + EVENTS_DELAY)
        oldest = self._ledger.oldest()
        if oldest is not None:
            due.append(oldest.deadline)
        self._connection.process_data_events(time_limit=max(0, min(due) - now))
        if not self._channel.is_open:   # what is in flight there is lost as with the connection
            raise pika.exceptions.ChannelWrongStateError(
                f"channel closed: {self._channel.close_reason!r}")
        if self._events_since is not None and (
                self._events.full or time.monotonic() - self._events_since >= EVENTS_DELAY):
            self._flush_events()
        oldest = self._ledger.oldest()
        if oldest is not None and time.monotonic() >= oldest.deadline:
            self._no_reply()

    def _flush_events(self):
        self._events_since = None
        if self._events is not None and self._connection is not None:
            try:
                with blocking.answered_within(self._connection, self.timeout,
                                              "sending submitted events", self.settings):
                    self._events.flush()
            except TaskqueueError as exc:    # never the tasks' failure: they are confirmed
                log.debug("submitted events: %s", exc)

    def _no_reply(self):
        """The broker stopped answering: what is in flight fails (not tried again, as
        answered_within's waits), the connection is given up."""
        broker = pikaparams.describe(self.settings)
        for task in self._ledger.entries():
            self._settle(task, SessionClosed(
                f"{task.what}: no reply from {broker} in {self.timeout:g}s"))
        self._ledger = ConfirmLedger()
        self._drop()

    def _lost(self, exc):
        """Each task in flight is published once more on the next connection; one that
        was already is ConnectionLost."""
        log.info("connection lost (%r); connecting again", exc)
        again = []
        for task in self._ledger.entries():   # (the nacked ones wait for their time)
            if task.resent:
                self._settle(task, self._lost_error(exc))
            else:
                task.resent = True
                again.append(task)
        self._ledger = ConfirmLedger()
        with self._lock:
            self._queued.extendleft(reversed(again))
        self._drop()

    def _lost_error(self, exc):
        return SessionClosed(f"connection to {pikaparams.describe(self.settings)} lost: "
                             f"{exc!r}")

    def _drop(self):
        connection, self._connection = self._connection, None
        self._channel = self._declarer = None
        self._flush_events_lost()
        blocking.close_within(connection, min(self.timeout, JOIN_MARGIN))

    def _flush_events_lost(self):
        if self._events is not None and self._events_since is not None:
            log.debug("submitted events not sent: the connection went")
        self._events = self._events_since = None

    def _fail_all(self, error):
        with self._lock:
            tasks, self._queued = list(self._queued), collections.deque()
        tasks += self._ledger.entries() + [task for _, task in self._retries]
        self._ledger = ConfirmLedger()
        self._retries = []
        for task in tasks:
            self._settle(task, error)

    @staticmethod
    def _settle(task, error=None):
        task.error = error
        task.done.set()

    # Connection callbacks (in process_data_events): they must not block nor raise.
    def _on_confirm(self, frame):
        confirm = frame.method
        for task, problem in self._ledger.confirmed(confirm.delivery_tag, confirm.multiple,
                                                    confirm.NAME == "Basic.Ack"):
            if problem is None:
                self._confirmed(task)
            elif problem[0] == "nacked":
                self._nacked(task)
            else:
                self._redeclare = True   # returned: perhaps taskqueue was deleted
                self._settle(task, PublishRefused(unroutable_onehop(task.worker_type)))

    def _confirmed(self, task):
        if self._events is not None and self._events.enabled:
            self._events.add(task.props.message_id, task.worker_type, None,
                             tracecontext.trace_id(task.props.headers), task.sent)
            if self._events_since is None:
                self._events_since = time.monotonic()
        self._settle(task)

    def _nacked(self, task):
        task.tries += 1
        wait = nacks.delay_before_retry(task.tries)
        subject = (f"the task for {task.worker_type} (into {worker_queue(task.worker_type)} "
                   f"or {TASK_QUEUE})")
        if wait is None:
            self._settle(task, PublishNacked(subject, task.tries, nacks.waited(task.tries)))
            return
        log.info("%s; trying again in %g s (try %d of %d)", PublishNacked(subject), wait,
                 task.tries + 1, nacks.TRIES)
        self._retries.append((time.monotonic() + wait, task))

    def _on_return(self, routing_key, props, body):
        """The broker could not route this task; its confirm follows."""
        self._ledger.returned((routing_key, props.message_id, body), "unroutable")


def _nothing():
    """What a wake-up runs: process_data_events returns to the I/O loop."""


@atexit.register
def _close_at_exit():
    """At the interpreter's exit (before its daemon threads stop): a script that
    submitted and never closed its Client still sends the `submitted` events its
    line holds back for EVENTS_DELAY, and closes its connection; EXIT_WAIT at most each."""
    for line in list(_open_lines):
        line.close(EXIT_WAIT)
