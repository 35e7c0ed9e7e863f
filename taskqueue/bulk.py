"""`taskqueue submit --file`: many tasks from a JSON-lines file.

The whole file is checked before the first publish, so bad input publishes
nothing. Then each workitem goes out as the envelope a single `submit`
sends, with up to confirms.WINDOW confirms outstanding. Broker trouble
midway cannot be all or nothing: the Outcome says how many tasks the broker
confirmed and the line to resume from.
"""
import json
import math
import shlex
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Optional

from . import amqp
from .confirms import ConfirmWindow
from .errors import InputError, TaskqueueError
from .progress import Progress

#: Bad lines named in the error before the rest are only counted.
PROBLEMS_SHOWN = 10


@dataclass(frozen=True)
class Task:
    line: int       # in the file, counting from 1, blank lines included (as tail -n +LINE does)
    body: bytes     # the envelope


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
    Blank lines are skipped; every other line is one workitem in JSON."""
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
            workitem = parse_workitem(text)
        except ValueError as exc:
            problems.append((number, f"{exc}: {_shown(text)}"))
            continue
        body = json.dumps({"worker_type": worker_type, "workitem": workitem}).encode()
        tasks.append(Task(number, body))
    return tasks, problems


def parse_workitem(text):
    """The JSON value in `text`; ValueError saying what is wrong. Stricter than
    json.loads where the dispatcher is: no NaN or Infinity."""
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("not usable JSON: nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def _finite_float(text):
    number = float(text)
    if math.isinf(number):
        raise ValueError(f"number {text[:30]} is too large")
    return number


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

    @property
    def rate(self):
        return self.confirmed / self.elapsed if self.elapsed > 0 else 0.0


def submit(settings, worker_type, tasks, stream=None):
    """Publish `tasks` to `taskqueue` with confirms, a progress bar on a terminal;
    return an Outcome. Stops at the first task the broker refuses."""
    progress = Progress(len(tasks), stream)
    confirmed = bytearray(len(tasks))      # 1 for each task the broker confirmed
    refusals = []                          # (index, why)
    count = 0

    def on_settled(index, problem):        # in the hub
        nonlocal count
        if problem is None:
            confirmed[index] = 1
            count += 1
        else:
            refusals.append((index, problem))
    started = time.monotonic()
    error, interrupted, session = None, False, None
    try:
        session = amqp.Session(settings, "taskqueue submit --file").open()
        session.declare_queue(amqp.TASK_QUEUE)
        window = ConfirmWindow(session, on_settled, on_wait=lambda: progress.update(count))
        for index, task in enumerate(tasks):
            if refusals:
                break
            window.publish(amqp.TASK_QUEUE, task.body, _properties(), index)
            progress.update(count)
        window.flush()
    except TaskqueueError as exc:
        error = str(exc)
    except KeyboardInterrupt:
        error, interrupted = "interrupted", True
    finally:
        if session is not None:
            session.close(timeout=5)
    elapsed = time.monotonic() - started
    progress.finish(count)
    if refusals and error is None:
        index, why = min(refusals)
        error = f"line {tasks[index].line}: {why}"
    first = confirmed.find(0)
    return Outcome(len(tasks), count, elapsed, None if first < 0 else tasks[first].line,
                   0 if first < 0 else sum(confirmed[first:]), error, interrupted)


def _properties():
    # As a single `taskqueue submit` sends it.
    message_id = uuid.uuid4().hex
    return amqp.properties(content_type="application/json", delivery_mode=amqp.PERSISTENT,
                           message_id=message_id, correlation_id=message_id)


def summary(outcome, worker_type, path):
    """The lines to print at the end, for people and scripts alike."""
    lines = [f"submitted {outcome.confirmed} of {outcome.total} tasks ({worker_type}) to "
             f"{amqp.TASK_QUEUE} in {outcome.elapsed:.2f} s ({outcome.rate:,.0f}/s)"]
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
    return lines
