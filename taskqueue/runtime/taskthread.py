"""The one OS thread a worker process runs its tasks in, while the hub keeps the
AMQP connection (heartbeats, deliveries) alive.

Handing a task to a thread and its result back costs two wake-ups of a
sleeping thread, and those, not Python, were most of a worker's CPU per short
task (bench/README.md: gevent's threadpool, a wait in the hub's loop, a
libev async watcher per call). Two changes make that cheaper:

- The hub itself waits, up to QUICK seconds, on a lock the thread releases as
  the call returns. A short task (most are) then costs the thread's wake-up and
  the hub's, nothing else: no pass through the hub's loop, no watcher. A longer
  one is handed back to the loop after QUICK seconds and its result arrives
  through an async watcher, as with the threadpool. A call that needs the hub
  meanwhile (a plugin's basic_publish or reply waits for it) ends that wait at
  once: see hub_needed().
- One thread, started once, runs every call: a worker runs one task at a time.
  Plugins see every task in the same thread, so their thread-local state (a
  database connection, say) lasts from one task to the next.
"""
import ctypes
import threading

import gevent
from gevent.event import AsyncResult

#: Seconds the hub waits for a call to return before it goes back to its loop. Long
#: enough for a short task, short enough that heartbeats and deliveries never notice.
QUICK = 0.002


class TaskThread:
    """Run calls one at a time in a thread of their own; results come back in the hub."""

    def __init__(self, name="task"):
        self._go = threading.Lock()         # released once per call; the thread waits on it
        self._go.acquire()
        self._returned = threading.Lock()   # released by the thread when the hub may go on
        self._returned.acquire()
        self._lock = threading.Lock()       # guards _outcome and _late between the threads
        self._late = False          # the hub went back to its loop: the result comes via _done
        self._call = None           # (fn, args) for the thread; None: end the thread
        self._outcome = None        # (True, value) or (False, exception), from the thread
        self._result = None         # the AsyncResult of the call in progress
        self._done = gevent.get_hub().loop.async_()
        self._done.start(self._deliver)
        self._done.ref = False      # holds the loop only while a late result is due
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def spawn(self, fn, *args):
        """Run fn(*args) in the thread; an AsyncResult holds what it returns or raises
        (set already when it returned within QUICK seconds). The hub's thread only,
        one call at a time."""
        if self._result is not None and not self._result.ready():
            raise RuntimeError("the task thread is still running the previous call")
        self._result = result = AsyncResult()
        self._returned.acquire(blocking=False)   # locked, whichever way the last call ended
        self._late = False
        self._call = (fn, args)
        self._go.release()
        if not self._returned.acquire(timeout=QUICK):
            with self._lock:
                # It may have returned (or called hub_needed) since the timeout: take
                # that release back, or the next call would seem done at once.
                released = self._returned.acquire(blocking=False)
                self._late = self._late or not released
        if self._late:
            self._done.ref = True
        else:
            self._deliver()
        return result

    def hub_needed(self):
        """From the task thread, before it waits for the hub: end the hub's QUICK wait now,
        the call's result will come through the loop."""
        with self._lock:
            if self._outcome is None and not self._late:
                self._late = True
                self._returned.release()

    @property
    def current(self):
        """The AsyncResult of the last call (None before the first)."""
        return self._result

    def interrupt(self, exc_type):
        """Raise `exc_type` in the thread at its next Python instruction (a cancelled
        task: errors.TaskCancelled); True when the thread runs a call. A call into C
        (a sleep, a read) gets it only once it returns."""
        ident = self._thread.ident
        if self._result is None or self._result.ready() or ident is None:
            return False
        done = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident),
                                                          ctypes.py_object(exc_type))
        return done == 1

    def close(self):
        """Let the thread end once its current call returns (a daemon: a call that never
        returns does not keep the process alive)."""
        self._call = None
        if self._go.locked():
            self._go.release()
        self._done.stop()

    def _run(self):
        while True:
            self._go.acquire()
            call = self._call
            if call is None:
                return
            fn, args = call
            try:
                outcome = (True, fn(*args))
            except BaseException as exc:   # handed to the hub, as gevent's threadpool does
                outcome = (False, exc)
            with self._lock:
                self._outcome = outcome
                late = self._late
                if not late:
                    self._returned.release()
            if late:
                self._done.send()

    def _deliver(self):
        """In the hub: hand the call's outcome to its AsyncResult."""
        with self._lock:
            outcome, self._outcome = self._outcome, None
        if outcome is None or self._result is None:
            return
        self._done.ref = False
        ok, value = outcome
        if ok:
            self._result.set(value)
        else:
            self._result.set_exception(value)
