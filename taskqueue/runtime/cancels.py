"""The cancels a worker process honours (protocol/cancels.py): which ids are cancelled,
whether the task in hand is, and stopping the task thread of a cancelled one.

The ids come from the cancels stream (broker/cancelstream.py), read from its start
before the process starts its first task, then followed. A task dequeued with a
cancelled id is not run (worker._not_to_start). A running task whose cancel comes
is settled by the hub at once, then its thread gets errors.TaskCancelled (so that
the plugin's `finally` runs) and the group's stop_timeout to return; then the
process is replaced (lifecycle.EXIT_CANCELLED): a thread that does not return
cannot be ended otherwise, and a plugin interrupted anywhere may hold a lock or a
half-done state. Holds no connection of its own beyond the follower's (a worker's
follower shares its side connection with the worker's task events: sideline.py).
"""
import logging

import gevent
from gevent.event import Event

from taskqueue.broker.cancelstream import CancelFollower
from taskqueue.errors import TaskCancelled
from taskqueue.protocol import cancels

log = logging.getLogger(__name__)

#: Longest a dequeued task waits for the stream to be read to its end (seconds): a
#: cancels connection that cannot be opened while the tasks' own works must not stop
#: the work; then tasks run, cancelled or not, until it is read (said in a warning).
CATCH_UP_LIMIT = 30.0


class Cancels:
    """The cancelled ids, for the process whose Session is `session` (child `child`),
    read on `line` (a sideline.SideLine; None: a connection of their own)."""

    def __init__(self, session, child, line=None):
        self.ids = cancels.CancelledIds()
        self.hit = Event()          # set when the task in hand is cancelled
        self._in_hand = None
        self._warned_late = False
        self._follower = CancelFollower(session, child, self._cancelled, line)

    def start(self):
        self._follower.start()
        return self

    def read(self, *interrupts):
        """Wait until the stream was read to its end once (at most CATCH_UP_LIMIT), or one
        of `interrupts` (gevent events: a stop, a closed session) is set; False then."""
        caught_up = self._follower.caught_up
        if caught_up.is_set():
            return True
        gevent.wait([caught_up, *interrupts], count=1, timeout=CATCH_UP_LIMIT)
        if any(event.is_set() for event in interrupts):
            return False
        if not caught_up.is_set() and not self._warned_late:
            self._warned_late = True
            log.warning("%s not read after %gs: tasks run meanwhile even if cancelled",
                        cancels.STREAM, CATCH_UP_LIMIT)
        return True

    def hold(self, key):
        """The task `key` is in hand now: True when it is cancelled already."""
        self._in_hand = key
        self.hit.clear()
        return key in self.ids

    def release(self):
        self._in_hand = None
        self.hit.clear()

    def wait(self, result, timeout=None):
        """Wait for the task's `result` (an AsyncResult), its cancel, or `timeout`."""
        gevent.wait([result, self.hit], count=1, timeout=timeout)

    def settled(self, key):
        """A cancelled task was settled here: said in the stream, for `taskqueue status`."""
        self._follower.settled(key)

    def close(self):
        self._follower.close()

    def _cancelled(self, task_id):
        if self.ids.add(task_id) and self.ids.forgotten == 1:
            log.warning("more than %d cancelled ids: the oldest are forgotten",
                        self.ids.limit)
        if task_id == self._in_hand:
            self.hit.set()


def stop_task(tasks, result, grace):
    """Raise TaskCancelled in the task thread (`tasks`, running the call of `result`) and
    give it `grace` seconds to return; True when it did."""
    if result.ready():
        return True
    tasks.interrupt(TaskCancelled)
    gevent.wait([result], timeout=grace)
    return result.ready()


class NoCancels:
    """What cancels nothing: for code run without a session of its own (unit tests)."""

    def __init__(self):
        self.hit = Event()      # never set

    def read(self, *interrupts):
        return True

    def hold(self, key):
        return False

    def release(self):
        pass

    def wait(self, result, timeout=None):
        gevent.wait([result], timeout=timeout)

    def settled(self, key):
        pass

    def close(self):
        pass
