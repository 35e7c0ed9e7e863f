"""Stand-ins for the broker session and for fork, shared by the unit tests.

`RecordingSession` takes the calls an amqp.Session would send to the broker
and records them; `FakeProcesses` takes the supervisor's forks and kills
and makes no process. The logic under test is which calls are made, and
when; tests/integration covers the real I/O against RabbitMQ and real
processes.
"""
import errno
import itertools
import os
from types import SimpleNamespace

import pika
import pika.exceptions
import gevent
from gevent.event import Event

from taskqueue.errors import SessionClosed


class RecordingSession:
    """Records calls; declares succeed at once unless `refuse` names the queue.

    An ack with `multiple` is recorded as what the broker does with it: an ack
    of every delivery up to its tag not settled yet. A delivery settled twice
    fails the test, as it would close the channel with RabbitMQ. Once
    `closed` is set it answers as amqp.Session does: calls that wait for the
    broker (qos, consume) raise SessionClosed, cancel does nothing, and
    publishing or settling raises pika's ChannelWrongStateError.
    """

    def __init__(self, refuse=(), answer_declares=True, require_mandatory=True, existing=()):
        self.calls = []
        self.existing = set(existing)   # the queues queue_exists_async finds (others: none)
        self.ready = {}     # queue -> [delivery tag or (tag, props)] that get() takes, in order
        self.delivered = []
        self.settled = set()
        self.ack_frames = []    # (tag, multiple) as sent
        self.refuse = refuse
        self.answer_declares = answer_declares
        self.unanswered = []
        self.published = []     # bodies, in order
        self.sent = []          # (queue, body, props), in order
        self.replies = []       # (reply_to, body, props) given to reply(), in order
        self.closed = Event()
        self.close_reason = None
        self.aborted = False
        self.require_mandatory = require_mandatory
        self.consumers = {}     # consumer tag -> on_message, while consuming
        self._tags = (f"ctag{n}" for n in itertools.count(1))

    @property
    def published_props(self):
        """The properties of what was published, in order."""
        return [props for _, _, props in self.sent]

    @property
    def is_open(self):
        return not self.closed.is_set()

    @is_open.setter
    def is_open(self, value):   # `session.is_open = False` closes it, as `close()` does
        if value:
            self.closed.clear()
        else:
            self.close()

    def close(self, reason="closed by the test"):
        self.close_reason = reason
        self.closed.set()

    def abort(self):
        self.aborted = True

    def of(self, kind):
        return [c for c in self.calls if c[0] == kind]

    # -- publishing --------------------------------------------------------------

    def declare_onehop(self, task_queue=False, worker_queues=()):
        self.calls.append(("onehop", task_queue, tuple(worker_queues)))

    def declare_queue_async(self, queue, on_done):
        self.calls.append(("declare", queue))
        if not self.answer_declares:
            self.unanswered.append((queue, on_done))
        else:
            on_done(f"queue {queue!r} refused" if queue in self.refuse else None)

    def queue_exists_async(self, queue, on_done):
        self.calls.append(("exists", queue))
        on_done(queue in self.existing)

    def get(self, queue):
        self._check_open("get")
        self.calls.append(("get", queue))
        waiting = self.ready.get(queue)
        if not waiting:
            return None
        tag, props = waiting.pop(0) if isinstance(waiting[0], tuple) else (waiting.pop(0), None)
        self.delivered.append(tag)
        return (SimpleNamespace(delivery_tag=tag, redelivered=False),
                props or pika.BasicProperties(), b"")

    def publish(self, queue, body, props, exchange="", mandatory=False):
        assert mandatory or not self.require_mandatory, \
            "an unroutable publish must come back, not vanish"
        self._check_channel()
        self.calls.append(("publish", queue, body))
        self.published.append(body)
        self.sent.append((queue, body, props))

    def reply(self, reply_to, body, props):
        """A reply goes on the session's reply connection: never on its channel, so
        it takes no sequence number and works whatever the channel's state."""
        self.calls.append(("reply", reply_to, body))
        self.replies.append((reply_to, body, props))

    def enable_confirms(self, on_confirm, on_return):
        self.on_confirm, self.on_return = on_confirm, on_return
        self.confirm_seen = Event()

    def await_confirm(self, timeout):
        gevent.wait([self.confirm_seen, self.closed], count=1, timeout=timeout)
        self.confirm_seen.clear()

    def confirm(self, seq, multiple=False, ack=True):
        """The broker's answer to publish number `seq`."""
        method = pika.spec.Basic.Ack(seq, multiple) if ack else pika.spec.Basic.Nack(seq, multiple)
        self.on_confirm(SimpleNamespace(method=method))
        self.confirm_seen.set()

    # -- consuming ---------------------------------------------------------------

    def qos(self, prefetch):
        self._check_open("qos")
        self.calls.append(("qos", prefetch))

    def consume(self, queue, on_message):
        self._check_open("consume")
        tag = next(self._tags)
        self.consumers[tag] = on_message
        self.calls.append(("consume", queue, tag))
        return tag

    def cancel(self, consumer_tag):
        if not self.is_open:
            return
        self.consumers.pop(consumer_tag)
        self.calls.append(("cancel", consumer_tag))

    def deliver(self, tag, body=b"", consumer=None, props=None):
        """The broker delivers `tag` to `consumer` (the latest one by default)."""
        consumer = consumer or list(self.consumers)[-1]
        self.delivered.append(tag)
        self.consumers[consumer](SimpleNamespace(delivery_tag=tag, redelivered=False),
                                 props or pika.BasicProperties(), body)

    # -- settling ----------------------------------------------------------------

    def ack(self, tag, multiple=False):
        self.ack_frames.append((tag, multiple))
        for acked in [t for t in self.delivered if t <= tag and t not in self.settled] \
                if multiple else [tag]:
            self._settle(acked, ("ack", acked))

    def nack(self, tag, multiple=False, requeue=True):
        self._settle(tag, ("nack", tag, requeue))

    def reject(self, tag, requeue=True):
        self._settle(tag, ("reject", tag, requeue))

    def _settle(self, tag, call):
        self._check_channel()
        assert tag not in self.settled, f"delivery {tag} settled twice"
        self.settled.add(tag)
        self.calls.append(call)

    def _check_channel(self):
        if self.closed.is_set():
            raise pika.exceptions.ChannelWrongStateError("Channel is closed.")

    def _check_open(self, what):
        if self.closed.is_set():
            raise SessionClosed(f"{what}: session closed: {self.close_reason!r}")


class FakeProcesses:
    """The supervisor's fork and kill, without processes (Supervisor(fork=, kill=)).

    `fork_and_watch(callback)` hands out pids from 10001 up, or raises the
    OSError queued with `fail_next_fork()`. `kill()` records the signal and
    checks its arguments as os.kill does (a None pid is a TypeError).
    `exit(pid, status)` is the child watcher seeing that process end.
    """

    def __init__(self):
        self.forked = []            # pids, in order
        self.signals = []           # (pid, signal)
        self._watchers = {}         # pid -> callback, while it "runs"
        self._failures = []
        self._pids = itertools.count(10001)

    def fail_next_fork(self, err=errno.EAGAIN):
        self._failures.append(OSError(err, os.strerror(err)))

    def fork_and_watch(self, callback):
        if self._failures:
            raise self._failures.pop(0)
        pid = next(self._pids)
        self.forked.append(pid)
        self._watchers[pid] = callback
        return pid

    def kill(self, pid, sig):
        if not isinstance(pid, int):
            raise TypeError(f"kill(): pid must be an integer, not {type(pid).__name__}")
        if pid not in self._watchers:
            raise ProcessLookupError(errno.ESRCH, os.strerror(errno.ESRCH))
        self.signals.append((pid, sig))

    @property
    def running(self):
        return sorted(self._watchers)

    def exit(self, pid, status=0):
        """The process `pid` ended with waitpid status `status` (exit code N is N << 8)."""
        callback = self._watchers.pop(pid)
        callback(SimpleNamespace(pid=pid, rstatus=status))
