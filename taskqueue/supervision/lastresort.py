"""What a supervisor does when its own code fails.

A bug met once, handling one event, is logged and supervising goes on: the
healthy children are worth more than a restart of everything. When it cannot
go on (the errors keep coming, or one hits a stop), the children are stopped
gracefully without the state machine, which may be what broke: SIGTERM, their
stop_timeout to finish their tasks, then SIGKILL (gunicorn's arbiter does the
same in its outermost except). Imports no gevent: the caller hands over its
event queue and its kill().
"""
import collections
import logging
import queue
import signal
import time

from taskqueue.supervision.lifecycle import describe_exit

log = logging.getLogger("taskqueue.supervision.supervisor")

#: Internal errors tolerated within INTERNAL_ERROR_WINDOW seconds; one more means
#: an invariant is broken, and the supervisor stops everything and exits 1 (the
#: init system starts it afresh).
INTERNAL_ERRORS_TOLERATED = 5
INTERNAL_ERROR_WINDOW = 60.0
#: Seconds to wait for children killed with SIGKILL to be reaped.
KILL_WAIT = 5.0
#: Longest wait for one event, so that a deadline is never overslept.
TICK = 1.0


class ErrorBudget:
    """Internal errors in a sliding window: a few are bugs met once, many a broken invariant."""

    def __init__(self, tolerated=INTERNAL_ERRORS_TOLERATED, window=INTERNAL_ERROR_WINDOW,
                 clock=time.monotonic):
        self.tolerated, self.window, self._clock = tolerated, window, clock
        self._times = collections.deque()

    def spend(self):
        """Count one error; False once more than `tolerated` fell within `window` seconds."""
        now = self._clock()
        self._times.append(now)
        while self._times[0] <= now - self.window:
            self._times.popleft()
        if len(self._times) > self.tolerated:
            log.critical("%d internal errors within %gs: the supervisor cannot go on",
                         len(self._times), self.window)
            return False
        return True


def stop_children(children, events, kill, grace, kill_wait=KILL_WAIT):
    """Stop `children` ({pid: name}) gracefully; return True if some had to be killed.

    SIGTERM to each, then their `grace` seconds, taking `exit` events
    (`("exit", pid, status)`) from the queue `events`; SIGKILL to what is left,
    at once if SIGTERM or SIGINT arrives again (`("signal", sig)`), as in a
    normal stop. `kill(pid, sig)` signals one.
    """
    live = dict(children)
    log.critical("supervisor failed: stopping its %d children gracefully", len(live))
    _signal_all(live, kill, signal.SIGTERM)
    _await_exits(live, events, grace)
    if not live:
        return False
    log.warning("%d children still running %gs after SIGTERM; killing them", len(live), grace)
    _signal_all(live, kill, signal.SIGKILL)
    _await_exits(live, events, kill_wait)
    return True


def _signal_all(live, kill, sig):
    for pid in live:
        try:
            kill(pid, sig)
        except ProcessLookupError:
            pass  # it exited; its exit event is on its way


def _await_exits(live, events, seconds):
    deadline = time.monotonic() + seconds
    while live and time.monotonic() < deadline:
        try:
            event = events.get(timeout=max(0.0, min(TICK, deadline - time.monotonic())))
        except queue.Empty:
            continue
        if event[0] == "exit" and event[1] in live:
            log.info("%s pid=%d %s", live.pop(event[1]), event[1], describe_exit(event[2]))
        elif event[0] == "signal" and event[1] in (signal.SIGTERM, signal.SIGINT):
            return
