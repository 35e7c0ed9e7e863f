"""`taskqueue task ID` and `taskqueue events`: the task events stream
(protocol/events.py) read (broker/eventstream.py) and printed (eventview.py).

Read-only: the stream is never declared here (a missing one is said so, not
made), only consumed from a point in time on; each cmd_<name>(args) returns an
exit code (startup.EXIT_*).
"""
import logging
import signal
import sys
import time

from taskqueue.broker.eventstream import EventReader, mentioning
from taskqueue.cli import eventview
from taskqueue.cli.startup import EXIT_NO_EVENTS, EXIT_OK, load_config
from taskqueue.errors import InputError, NoEventStream
from taskqueue.printable import printable
from taskqueue.protocol import events

log = logging.getLogger("taskqueue")
#: Longest a `taskqueue task` reads (seconds): far beyond what a lookup takes (well
#: under a second), for a stream written faster than it can be read.
TASK_DEADLINE = 10.0

TASK_EXIT_CODES = f"""\
Reading starts {eventview.CLOCK_SKEW:g} s before the time of the task's id (taskqueue's
clients make UUIDv7 ids, which tell it: clocks of the hosts may differ by that
much), or {eventview.TASK_SINCE:g} s back for an id that tells no time; --since
DURATION (90, 15m, 12h, 7d) reads that far back instead. Times are local.

exit status:
  0  events found (the last line says how the task ended, or that it has not yet)
  1  the connection broke while reading
  2  bad arguments or config
  4  no broker could be reached (refused, TLS, login)
  {EXIT_NO_EVENTS}  no event of the task since then, or no events stream at all
     (events are off, [amqp] events, or nothing has written one yet); stderr says which
"""

EVENTS_EXIT_CODES = f"""\
Prints the events of the last --since DURATION (default {eventview.EVENTS_SINCE / 60:g}m),
in the order the broker took them; with --follow it goes on printing them as
they come until Ctrl-C or SIGTERM (exit status 0). Times are local.

exit status: 0 done (also when no event matched); 1 the connection broke; 2
bad arguments or config; 4 no broker could be reached; {EXIT_NO_EVENTS} no events stream
(events are off, [amqp] events, or nothing has written one yet).
"""


def check_task_id(task_id):
    """A task id as given on the command line; InputError unless events could name it."""
    if not task_id or len(task_id) > events.MAX_TEXT:
        raise InputError(f"task id {printable(task_id[:100])!r}: expected 1 to "
                         f"{events.MAX_TEXT} characters (a message id, as `submit` prints it)")
    return task_id


def cmd_task(args):
    task_id = check_task_id(args.task_id)
    cfg, _ = load_config(args, check_users=False)
    now = time.time()
    start, why = eventview.task_start(task_id, args.since, now)
    since_text = f"{eventview.clock(start)}, {why}"
    began = time.monotonic()
    try:
        with EventReader(cfg.amqp, start, name="taskqueue task") as reader:
            found = [event for event in reader.events(
                deadline=time.monotonic() + TASK_DEADLINE, mentions=mentioning(task_id))
                if event["task"] == task_id]
    except NoEventStream as exc:
        return _no_events(exc)
    log.debug("read %d messages of %s from %s in %.3fs (ended: %s)", reader.messages,
              reader.stream, eventview.clock(start), time.monotonic() - began,
              reader.stopped_by)
    found = eventview.in_order(found)
    for event in found:
        print(eventview.as_json(event) if args.json else eventview.line(event))
    _say_skipped(reader)
    if reader.stopped_by == "deadline":
        _say(f"stopped reading after {TASK_DEADLINE:g}s: {reader.stream} is written faster "
             "than it is read; the task's later events may be missing")
    if not found:
        return _no_events(f"no events for task {printable(task_id)} since {since_text}")
    if not args.json:
        print(eventview.summary(task_id, found, since_text))
    return EXIT_OK


def cmd_events(args):
    if args.task is not None:
        check_task_id(args.task)
    cfg, _ = load_config(args, check_users=False)
    start = time.time() - (eventview.EVENTS_SINCE if args.since is None else args.since)
    stop = _Stop()
    try:
        with EventReader(cfg.amqp, start) as reader, stop:
            for event in reader.events(follow=args.follow, stop_asked=stop.asked,
                                       mentions=args.task and mentioning(args.task)):
                if args.type is not None and event.get("type") != args.type:
                    continue
                if args.task is not None and event["task"] != args.task:
                    continue
                print(eventview.as_json(event) if args.json
                      else eventview.line(event, with_task=True), flush=args.follow)
    except NoEventStream as exc:
        return _no_events(exc)
    _say_skipped(reader)
    return EXIT_OK


def _no_events(why):
    _say(why)
    return EXIT_NO_EVENTS


def _say_skipped(reader):
    text = eventview.malformed_text(reader)
    if text:
        _say(text)


def _say(text):
    print(f"taskqueue: {printable(text)}", file=sys.stderr)


class _Stop:
    """SIGINT and SIGTERM, while following, ask the reading to stop (it checks at least
    every eventstream.IDLE seconds): the consumer is cancelled and the connection
    closed as at any end, and the command exits 0."""

    def __init__(self):
        self._asked = False
        self._before = {}

    def asked(self):
        return self._asked

    def _ask(self, signum, frame):
        self._asked = True

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._before[signum] = signal.signal(signum, self._ask)
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self._before.items():
            signal.signal(signum, handler)
