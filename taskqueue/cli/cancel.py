"""`taskqueue cancel ID...`: say what each task is (from the events stream, as
`taskqueue task` reads it), then cancel those not finished (Client.cancel: a
confirmed record each in the cancels stream, protocol/cancels.py).

A task whose events say it finished (done, failed, dead, expired, cancelled) is
not cancelled: nothing is left to stop, and its cancel would only stay pending.
One without events is cancelled all the same: events are telemetry (lossy, and
off where [amqp] events is), and a task may be submitted by a client that
writes none. Every id is checked before anything is read or sent.
"""
import sys
import time

from taskqueue.broker.eventstream import EventReader, mentioning
from taskqueue.cli import eventview
from taskqueue.cli.startup import EXIT_OK, load_config
from taskqueue.client import Client
from taskqueue.errors import InputError, NoEventStream
from taskqueue.printable import printable
from taskqueue.protocol import cancels, events

#: Most ids one command takes (each costs a confirmed publish).
MAX_IDS = 10_000
#: Longest the lookup reads the events stream (seconds), as `taskqueue task`.
LOOKUP_DEADLINE = 10.0

CANCEL_EXIT_CODES = f"""\
Each task's events are read first (from {eventview.CLOCK_SKEW:g} s before the time of its id,
or the last {eventview.TASK_SINCE / 60:g} minutes: --since DURATION reads further back),
and one line per id says what it is:
  ID: cancelling (last: started on HOST)    not finished: cancelled
  ID: unknown (no event since ...)          cancelled all the same (events may be off)
  ID: finished (done on HOST): not cancelled
A queued or delayed task never starts; a running one is settled as cancelled and
its worker process replaced. Cancels hold 13 days, on every host.

exit status: 0 done (also for unknown and finished ids); 1 the broker did not take
a cancel, or the connection broke; 2 bad arguments or config (nothing sent); 4 no
broker could be reached.
"""


def checked_ids(task_ids):
    """The ids as given, each able to name a task; InputError for the first that is not."""
    if len(task_ids) > MAX_IDS:
        raise InputError(f"{len(task_ids)} task ids: at most {MAX_IDS} per command")
    for position, task_id in enumerate(task_ids, 1):
        problem = cancels.id_problem(task_id)
        if problem:
            raise InputError(f"task id {position} ({printable(task_id[:60])!r}): {problem}")
    return list(dict.fromkeys(task_ids))


def verdict(task_id, found, since_text):
    """(whether to cancel `task_id`, the line about it) from its events `found` (in
    order) read since `since_text` (None: no events stream)."""
    shown = printable(task_id)
    if since_text is None:
        return True, f"{shown}: unknown (no events stream): cancelling all the same"
    if not found:
        return True, (f"{shown}: unknown (no event since {since_text}): cancelling all the "
                      "same, in case it is still to come")
    finals = [event for event in found if event["event"] in events.FINAL]
    last = (finals or found)[-1]
    words = f"{printable(last['event'], spaces=False)} on {printable(last.get('host', '-'))}"
    if finals:
        return False, f"{shown}: finished ({words}): not cancelled"
    return True, f"{shown}: cancelling (last: {words})"


def cmd_cancel(args):
    task_ids = checked_ids(args.task_ids)
    cfg, _ = load_config(args, check_users=False)
    decisions = [verdict(task_id, found, since_text)
                 for task_id, found, since_text in _histories(cfg, task_ids, args.since)]
    chosen = [task_id for task_id, (cancel, _) in zip(task_ids, decisions) if cancel]
    if chosen:
        with Client.for_settings(cfg.amqp, name="taskqueue cancel") as client:
            client.cancel(*chosen)
    for _, text in decisions:
        print(text)
    return EXIT_OK


def _histories(cfg, task_ids, since):
    """(id, its events in order, since when in words) of each id: one read of the events
    stream, from the earliest start any id needs."""
    now = time.time()
    starts = {task_id: eventview.task_start(task_id, since, now) for task_id in task_ids}
    start = min(at for at, _ in starts.values())
    wanted = set(task_ids)
    found = {task_id: [] for task_id in task_ids}
    try:
        with EventReader(cfg.amqp, start, name="taskqueue cancel") as reader:
            for event in reader.events(deadline=time.monotonic() + LOOKUP_DEADLINE,
                                       mentions=_mention(task_ids)):
                if event["task"] in wanted and event["at"] >= starts[event["task"]][0]:
                    found[event["task"]].append(event)
    except NoEventStream:
        return [(task_id, [], None) for task_id in task_ids]
    if reader.stopped_by == "deadline":
        print(f"taskqueue: stopped reading after {LOOKUP_DEADLINE:g}s: some events may be "
              "missing", file=sys.stderr)
    return [(task_id, eventview.in_order(found[task_id]),
             f"{eventview.clock(starts[task_id][0])}, {starts[task_id][1]}")
            for task_id in task_ids]


def _mention(task_ids):
    """For one id, the bytes its events' batches hold (eventstream.mentioning); else None."""
    return mentioning(task_ids[0]) if len(task_ids) == 1 else None
