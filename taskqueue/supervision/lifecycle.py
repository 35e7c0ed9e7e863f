"""The life of one supervised child: states, events, transitions, exit codes,
and the restart policy (what an exit is, how long to back off).

Pure: no I/O, no gevent, no clock. The supervisor turns what happens (a
fork, a ready byte, an exit status, a timer) into an `Ev` (an exit through
`restart_decision`), asks `next_state`, and performs the side effect of the
state it enters.
"""
import enum
import os
import signal
import typing

from taskqueue.errors import IllegalTransition

#: A child that reported ready and then lived this long counts as started fine:
#: its death is restarted at once and its failure count is reset.
STABLE_SECONDS = 2.0
#: First delay of the exponential backoff between quick failures, and its cap.
BACKOFF_BASE = 0.1
BACKOFF_CAP = 30.0
#: Cap of the backoff between reconnection attempts: the broker is external,
#: and a child should be back within seconds of the broker's return.
RECONNECT_CAP = 5.0
#: Cap of the backoff between restarts of a child its tasks keep killing: fast
#: enough to work through poison tasks (the delivery limit ends each), slow
#: enough that a crash storm cannot eat the host (supervisord's lesson).
TASK_CRASH_CAP = 1.0
#: After this many quick failures in a row the child is quarantined.
QUARANTINE_AFTER = 10
#: How long a quarantined child waits before it is tried again (SIGHUP retries at once).
QUARANTINE_SECONDS = 60.0


class ChildState(enum.Enum):
    STOPPED = "STOPPED"
    STARTING = "STARTING"          # forked, not yet consuming
    RUNNING = "RUNNING"            # reported ready
    BACKOFF = "BACKOFF"            # died quickly; waiting before the next start
    STOPPING = "STOPPING"          # SIGTERM sent; finishing its current task
    QUARANTINED = "QUARANTINED"    # keeps failing; retried after QUARANTINE_SECONDS


class Ev(enum.Enum):
    START = "start"
    READY = "ready"
    DIED = "died"                  # after running stably
    DIED_QUICKLY = "died_quickly"
    DISCONNECTED = "disconnected"  # lost or could not reach the broker
    TASK_KILLED = "task_killed"    # died in the middle of a task
    LOAD_FAILED = "load_failed"    # cannot start until something changes
    TIMER = "timer"
    STOP = "stop"


# Exit codes: the child -> supervisor protocol.
EXIT_OK = 0             #: stopped as asked
EXIT_ERROR = 1          #: an unexpected error in taskqueue itself (logged with traceback)
EXIT_CONNECTION = 3     #: could not reach the broker, or lost the connection
EXIT_PLUGIN_LOAD = 4    #: the plugin failed to import, construct or set up
EXIT_USER = 5           #: could not switch to the configured Unix user
EXIT_TOPOLOGY = 6       #: a queue exists with other arguments than taskqueue declares
EXIT_RECYCLE = 7        #: reached max_tasks or max_memory; replace it at once
EXIT_CANCELLED = 8      #: its running task was cancelled (taskqueue cancel); replace it at once


class ExitCode(typing.NamedTuple):
    """One exit code of the protocol: its names, and what the supervisor makes of it."""
    code: int
    cause: str                  # one word: the metrics' `cause` label
    meaning: str                # log lines and `taskqueue status`: `exit 3 (<meaning>)`
    #: The event it is, whatever the uptime (restart_decision); None: a death,
    #: judged by whether the child had started fine.
    event: typing.Optional[Ev] = None


#: Every exit code a child uses. The log, `taskqueue status`, the metrics and
#: "Exit causes" table of docs/06-operating.md name exits from here
#: (tests/unit/test_lifecycle.py holds the table to it); child.EXPLAINED maps
#: exceptions to these codes.
EXITS = {exit.code: exit for exit in (
    ExitCode(EXIT_OK, "stopped", "stopped"),
    ExitCode(EXIT_ERROR, "error", "internal error"),
    # Not the child's fault: it must be back as soon as the broker is; never quarantined.
    ExitCode(EXIT_CONNECTION, "connection", "broker connection failed or lost", Ev.DISCONNECTED),
    # A restart cannot cure these: the child waits in quarantine for a fix (or SIGHUP).
    ExitCode(EXIT_PLUGIN_LOAD, "plugin_load", "plugin failed to load", Ev.LOAD_FAILED),
    ExitCode(EXIT_USER, "user", "could not switch user"),
    ExitCode(EXIT_TOPOLOGY, "topology", "queue declared with other arguments", Ev.LOAD_FAILED),
    # Planned: a replacement starts at once, whatever the uptime.
    ExitCode(EXIT_RECYCLE, "recycled", "recycled: max_tasks or max_memory reached", Ev.DIED),
    # Its task was settled before it exited: no death of a task, no backoff.
    ExitCode(EXIT_CANCELLED, "cancelled", "replaced: its running task was cancelled", Ev.DIED),
)}
#: The backoff cap of each event that backs off (BACKOFF_CAP for the others).
BACKOFF_CAPS = {Ev.DISCONNECTED: RECONNECT_CAP, Ev.TASK_KILLED: TASK_CRASH_CAP}

#: How a worker child reports a task ended (`<pid> done <outcome> <seconds>`).
TASK_OUTCOMES = {
    "ack": "completed: acked",
    "requeue": "given back to its queue: by the plugin (nack or reject with requeue), or by the "
               "worker when the broker refused its dead letter or retry (a nack: worker.py)",
    "reject": "refused by the plugin without requeue: dead-lettered by the broker",
    "raised": "handle_task raised: rejected, dead-lettered by the broker",
    "dead": "not run: it had killed delivery_limit processes, or was refused as it came in "
            "(inbound.py); dead-lettered",
    "retry": "put off: published again through the delay queues (retry, or raised with retries left)",
    "expired": "not run: its deadline (expires) passed before it could start; acked",
    "cancelled": "cancelled (taskqueue cancel): not run, or stopped while running; acked",
}
#: The outcomes of a task that was not run, or not to its end: no duration worth counting.
NOT_RUN = ("dead", "expired", "cancelled")


S, E = ChildState, Ev
_TABLE = {
    (S.STOPPED, E.START): S.STARTING,
    (S.BACKOFF, E.TIMER): S.STARTING,
    (S.QUARANTINED, E.TIMER): S.STARTING,
    (S.QUARANTINED, E.START): S.STARTING,
    (S.STARTING, E.READY): S.RUNNING,
    (S.RUNNING, E.DIED): S.STARTING,
    # Its ready report may still be in the pipe when its exit is handled.
    (S.STARTING, E.DIED): S.STARTING,
    (S.STARTING, E.DIED_QUICKLY): S.BACKOFF,
    (S.RUNNING, E.DIED_QUICKLY): S.BACKOFF,
    (S.STARTING, E.DISCONNECTED): S.BACKOFF,
    (S.RUNNING, E.DISCONNECTED): S.BACKOFF,
    (S.RUNNING, E.TASK_KILLED): S.BACKOFF,
    (S.STARTING, E.LOAD_FAILED): S.QUARANTINED,
    (S.RUNNING, E.LOAD_FAILED): S.QUARANTINED,
    (S.STARTING, E.STOP): S.STOPPING,
    (S.RUNNING, E.STOP): S.STOPPING,
    (S.STOPPING, E.DIED): S.STOPPED,
    (S.STOPPING, E.DIED_QUICKLY): S.STOPPED,
    (S.STOPPING, E.LOAD_FAILED): S.STOPPED,
    (S.STOPPING, E.DISCONNECTED): S.STOPPED,
    (S.STOPPING, E.TASK_KILLED): S.STOPPED,
    # Asked again (SIGTERM during a reload's drain): it is stopping already.
    (S.STOPPING, E.STOP): S.STOPPING,
    (S.BACKOFF, E.STOP): S.STOPPED,
    (S.QUARANTINED, E.STOP): S.STOPPED,
    (S.STOPPED, E.STOP): S.STOPPED,
}
del S, E


def next_state(state, event, failures=0, has_process=True):
    """The state a child in `state` enters on `event`.

    `failures` is the number of quick failures in a row, this one included:
    a quick death becomes QUARANTINED instead of BACKOFF once it reaches
    QUARANTINE_AFTER. Losing the broker never quarantines: it is not the
    child's fault, and it must come back as soon as the broker does.
    `has_process` is False for a STARTING child whose fork failed: stopping
    it goes straight to STOPPED, with no process to signal or wait for.
    Any pair not in the table raises IllegalTransition.
    """
    try:
        new = _TABLE[(state, event)]
    except KeyError:
        raise IllegalTransition(f"{event.value} is not possible in state {state.value}") from None
    if event is Ev.DIED_QUICKLY and new is ChildState.BACKOFF and failures >= QUARANTINE_AFTER:
        return ChildState.QUARANTINED
    if new is ChildState.STOPPING and not has_process:
        return ChildState.STOPPED
    return new


def classify_exit(exit_code, was_ready, uptime, in_task=False):
    """Turn how a child ended into an event. exit_code is None when a signal killed it.

    An exit code with an event in EXITS is that event. Otherwise a child that
    died in the middle of a task was killed by that task (or by task_timeout):
    the delivery limit deals with the task, so the process is restarted with
    a short backoff (TASK_CRASH_CAP) and never quarantined, which is for
    processes that cannot start.
    """
    known = EXITS.get(exit_code)
    if known is not None and known.event is not None:
        return known.event
    if was_ready and in_task:
        return Ev.TASK_KILLED
    if was_ready and uptime >= STABLE_SECONDS:
        return Ev.DIED
    return Ev.DIED_QUICKLY


class Restart(typing.NamedTuple):
    """What follows the end of a child's process (or a failed fork)."""
    event: Ev           # for next_state
    failures: int       # quick failures in a row, this one included; 0 after a stable run
    cap: float          # of the backoff before the next start, if it backs off

    def delay(self, jitter=0.0):
        """Seconds to wait in BACKOFF before the next start."""
        return backoff_delay(self.failures, jitter, self.cap)


def restart_decision(exit_code, was_ready, uptime, in_task, failures):
    """The restart policy: how a child ended, with `failures` quick failures in a row
    before it, -> Restart. exit_code is None when a signal killed it.

    A child that ran stably and then died restarts at once, and its count
    starts over: at 0 for a plain death or a recycle (DIED), at 1 for any
    other failure. Otherwise the failure adds to the count, which sets the
    backoff (backoff_delay) and, for quick deaths, the quarantine (next_state).
    A settled task also resets the count (the supervisor's handle_done).
    """
    event = classify_exit(exit_code, was_ready, uptime, in_task)
    stable = was_ready and uptime >= STABLE_SECONDS
    failures = 0 if event is Ev.DIED else 1 if stable else failures + 1
    return Restart(event, failures, BACKOFF_CAPS.get(event, BACKOFF_CAP))


def fork_failed(failures):
    """A fork failed (EAGAIN, ENOMEM: the host is short of processes or memory):
    a quick failure, backed off as one."""
    return Restart(Ev.DIED_QUICKLY, failures + 1, BACKOFF_CAP)


def backoff_delay(failures, jitter=0.0, cap=BACKOFF_CAP):
    """Seconds to wait before restarting after `failures` quick failures in a row.

    The first quick failure restarts at once (a single crash is not a loop);
    then BACKOFF_BASE doubles up to BACKOFF_CAP. `jitter` in [0, 1) adds up
    to 10 % so that many children failing together do not restart in step.
    """
    if failures <= 1:
        return 0.0
    doublings = min(failures - 2, 64)  # past the cap anyway; keeps 2**n a small float
    return min(cap, BACKOFF_BASE * 2 ** doublings) * (1 + 0.1 * jitter)


def describe_exit(status):
    """`exit 3 (broker connection failed or lost)` or `killed by SIGKILL` for a waitpid status."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"killed by {name}"
    code = os.WEXITSTATUS(status)
    known = EXITS.get(code)
    return f"exit {code} ({known.meaning})" if known else f"exit {code}"


def exit_code_of(status):
    """The exit code of a waitpid status, or None when a signal ended the process."""
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else None


def parse_done(detail):
    """A `done` report's `<outcome> <seconds>` -> (outcome, seconds), or None if malformed."""
    outcome, _, seconds = detail.partition(" ")
    try:
        value = float(seconds)
    except ValueError:
        return None
    if outcome not in TASK_OUTCOMES or not 0 <= value < float("inf"):
        return None
    return outcome, value
