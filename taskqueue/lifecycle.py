"""The life of one supervised child: states, events, transitions, backoff.

Pure: no I/O, no gevent, no clock. The supervisor turns what happens (a
fork, a ready byte, an exit status, a timer) into an `Ev`, asks
`next_state`, and performs the side effect of the state it enters.
"""
import enum
import os
import signal

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

# Exit codes: the child -> supervisor protocol.
EXIT_OK = 0             #: stopped as asked
EXIT_ERROR = 1          #: an unexpected error in taskqueue itself (logged with traceback)
EXIT_CONNECTION = 3     #: could not reach the broker, or lost the connection
EXIT_PLUGIN_LOAD = 4    #: the plugin failed to import, construct or set up
EXIT_USER = 5           #: could not switch to the configured Unix user
EXIT_TOPOLOGY = 6       #: a queue exists with other arguments than taskqueue declares
EXIT_RECYCLE = 7        #: reached max_tasks or max_memory; replace it at once

EXIT_MEANINGS = {
    EXIT_OK: "stopped",
    EXIT_ERROR: "internal error",
    EXIT_CONNECTION: "broker connection failed or lost",
    EXIT_PLUGIN_LOAD: "plugin failed to load",
    EXIT_USER: "could not switch user",
    EXIT_TOPOLOGY: "queue declared with other arguments",
    EXIT_RECYCLE: "recycled: max_tasks or max_memory reached",
}
#: How a worker child reports a task ended (`<pid> done <outcome> <seconds>`).
TASK_OUTCOMES = {
    "ack": "completed: acked",
    "requeue": "given back to its queue by the plugin (nack or reject with requeue)",
    "reject": "refused by the plugin without requeue: dead-lettered by the broker",
    "raised": "handle_task raised: rejected, dead-lettered by the broker",
    "dead": "not run: it had killed delivery_limit processes; dead-lettered",
}
#: Exits a restart cannot cure: the child waits in quarantine for a fix (or SIGHUP).
CANNOT_START = (EXIT_PLUGIN_LOAD, EXIT_TOPOLOGY)


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


class IllegalTransition(Exception):
    pass


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

    A child that died in the middle of a task was killed by that task (or by
    task_timeout): the delivery limit deals with the task, so the process is
    restarted with a short backoff (TASK_CRASH_CAP) and never quarantined,
    which is for processes that cannot start.
    """
    if exit_code in CANNOT_START:
        return Ev.LOAD_FAILED
    if exit_code == EXIT_CONNECTION:
        return Ev.DISCONNECTED
    if exit_code == EXIT_RECYCLE:
        return Ev.DIED  # planned: a replacement starts at once, whatever the uptime
    if was_ready and in_task:
        return Ev.TASK_KILLED
    if was_ready and uptime >= STABLE_SECONDS:
        return Ev.DIED
    return Ev.DIED_QUICKLY


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
    meaning = EXIT_MEANINGS.get(code)
    return f"exit {code} ({meaning})" if meaning else f"exit {code}"


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
