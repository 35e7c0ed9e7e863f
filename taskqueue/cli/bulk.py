"""`taskqueue submit --file`: many tasks from a JSON-lines file.

The whole file is checked before the first publish, so bad input publishes
nothing. Then each workitem goes out as a single `submit` sends it (one hop:
client.onehop_message), with up to confirms.WINDOW confirms outstanding. Broker trouble
midway cannot be all or nothing: the Outcome says how many tasks the broker
confirmed and the line to resume from.
"""
import contextlib
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Optional

from taskqueue.broker import pikaparams
from taskqueue.broker.onehopwindow import onehop_window
from taskqueue.cli.progress import Progress
from taskqueue.client import steered, task_properties, workitem_bytes
from taskqueue.errors import BrokerUnreachable, InputError, TaskqueueError
from taskqueue.protocol import onehop, topology, workitems

#: Bad lines named in the error before the rest are only counted.
PROBLEMS_SHOWN = 10


@dataclass(frozen=True)
class Task:
    line: int       # in the file, counting from 1, blank lines included (as tail -n +LINE does)
    body: bytes     # the workitem, JSON: what the worker receives


def read_tasks(path, worker_type):
    """The tasks of the file at `path` (`-`: stdin) for `worker_type`.
    InputError naming file:line and the problem for each bad line."""
    name = "<stdin>" if path == "-" else path
    try:
        if path == "-":
            return _checked(name, parse_lines(sys.stdin.buffer, worker_type))
        with open(path, "rb") as f:
            return _checked(name, parse_lines(f, worker_type))
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None


def _checked(name, parsed):
    tasks, problems = parsed
    if problems:
        lines = [f"{name}:{line}: {what}" for line, what in problems[:PROBLEMS_SHOWN]]
        if len(problems) > PROBLEMS_SHOWN:
            lines.append(f"... and {len(problems) - PROBLEMS_SHOWN} more bad lines")
        lines.append(f"nothing was submitted ({len(problems)} bad line"
                     f"{'s' if len(problems) > 1 else ''} of {len(tasks) + len(problems)} tasks)")
        raise InputError("\n".join(lines))
    return tasks


def parse_lines(lines, worker_type):
    """([Task], [(line number, problem)]) for an iterable of lines (bytes); pure.
    Blank lines are skipped; every other line is one workitem in JSON, read
    as `taskqueue submit` and the dispatcher read it (workitems.parse)."""
    tasks, problems = [], []
    for number, raw in enumerate(lines, 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append((number, f"not UTF-8 text (byte {exc.start + 1})"))
            continue
        if number == 1:
            text = text.lstrip("\ufeff")    # a byte-order mark some editors write
        if not text.strip():
            continue
        try:
            # The bytes a single submit sends (client.onehop_message)
            body = workitem_bytes(workitems.parse(text))
        except ValueError as exc:
            problems.append((number, f"{exc}: {_shown(text)}"))
            continue
        tasks.append(Task(number, body))
    return tasks, problems


def _shown(text):
    text = text.rstrip("\r\n")
    return repr(text if len(text) <= 60 else text[:60] + "...")


@dataclass
class Outcome:
    total: int
    confirmed: int
    elapsed: float
    resume_line: Optional[int]      # the first line not confirmed; None: all were
    confirmed_after: int            # tasks after resume_line the broker confirmed all the same
    error: Optional[str]
    interrupted: bool = False
    unconfirmed: int = 0            # sent, but neither confirmed nor refused
    unreachable: bool = False       # no broker could be reached: nothing was sent

    @property
    def rate(self):
        return self.confirmed / self.elapsed if self.elapsed > 0 else 0.0


#: Seconds to wait for the confirms of what was sent, after Ctrl-C.
INTERRUPT_FLUSH = 5.0


class _Tally:
    """What the broker said about each task."""

    def __init__(self, total):
        self.confirmed = bytearray(total)   # 1 for each task the broker confirmed
        self.count = 0                      # how many it confirmed
        self.refusals = []                  # (index, why)
        self.sent = 0

    def on_settled(self, index, problem):   # in the connection's I/O loop
        if problem is None:
            self.confirmed[index] = 1
            self.count += 1
        else:
            self.refusals.append((index, problem))


def submit(settings, worker_type, tasks, stream=None, trace=None, priority=None,
           expires=None):
    """Publish `tasks` to `taskqueue` with confirms, a progress bar on a terminal;
    return an Outcome. Stops at the first task the broker refuses, or at Ctrl-C.
    `trace`: the trace context headers every task carries (client.trace_headers);
    `priority`, `expires`: every task's, checked (client.steered)."""
    tally = _Tally(len(tasks))
    progress = Progress(len(tasks), stream)
    started = time.monotonic()
    error, unreachable = None, False
    with _interruptible() as stop:
        try:
            _publish(settings, worker_type, tasks, tally, progress, stop, trace,
                     lambda props: steered(props, priority, expires))
        except TaskqueueError as exc:
            error, unreachable = str(exc), isinstance(exc, BrokerUnreachable)
    elapsed = time.monotonic() - started
    progress.finish(tally.count)
    if tally.refusals and error is None:
        index, why = min(tally.refusals)
        error = f"line {tasks[index].line}: {why}"
    if stop.is_set() and error is None:
        error = "interrupted (Ctrl-C)"
    first = tally.confirmed.find(0)
    return Outcome(len(tasks), tally.count, elapsed, None if first < 0 else tasks[first].line,
                   0 if first < 0 else sum(tally.confirmed[first:]), error, stop.is_set(),
                   tally.sent - tally.count - len(tally.refusals), unreachable)


def _publish(settings, worker_type, tasks, tally, progress, stop, trace, steer):
    with onehop_window(settings, "taskqueue submit --file", tally.on_settled,
                       on_wait=lambda: progress.update(tally.count)) as window:
        for index, task in enumerate(tasks):
            if tally.refusals or stop.is_set():
                break
            # Its deadline counts from now, when it is published.
            props = steer(pikaparams.onehop_properties(task_properties(trace=trace),
                                                       worker_type))
            window.publish(worker_type, task.body, props, index)
            tally.sent += 1
            progress.update(tally.count)
        window.flush(INTERRUPT_FLUSH if stop.is_set() else None)


@contextlib.contextmanager
def _interruptible():
    """An Event the first Ctrl-C sets, so that the run stops between two publishes and
    still reports; a second Ctrl-C ends the process at once."""
    stop = threading.Event()
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield stop      # a background job of a shell: SIGINT is not for us
        return

    def on_sigint(signum, frame):   # between two bytecodes of the main thread: no I/O here
        stop.set()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def summary(outcome, worker_type, path):
    """The lines to print at the end, for people and scripts alike."""
    lines = [f"submitted {outcome.confirmed} of {outcome.total} tasks ({worker_type}) to "
             f"{onehop.EXCHANGE} in {outcome.elapsed:.2f} s ({outcome.rate:,.0f}/s)"]
    line = outcome.resume_line
    if line is not None:
        name, source = ("the input", "FILE") if path == "-" else (path, shlex.quote(path))
        done = (f"every task before line {line} of {name} is confirmed" if outcome.confirmed
                else f"no task of {name} is confirmed")
        lines.append(f"{done}; resume from line {line}: "
                     f"tail -n +{line} {source} | taskqueue submit --file - {worker_type}")
        if outcome.confirmed_after:
            lines.append(f"({outcome.confirmed_after} tasks after line {line} were confirmed too: "
                         f"resuming submits them a second time)")
        if outcome.unconfirmed:
            lines.append(f"({outcome.unconfirmed} tasks were sent without a confirm: some may "
                         f"be in {topology.worker_queue(worker_type)} or {topology.TASK_QUEUE} already, "
                         f"and resuming submits them again)")
    return lines
