"""What `taskqueue task` and `taskqueue events` print, and where they start reading
(pure).

An event is what events.decode gave: known keys, typed and bounded, but each
string whatever its writer chose (any publisher to the vhost may write one):
every field goes through printable(), so nothing acts on the terminal. Times are
shown in the local time of the machine running the command, to the
millisecond, as taskqueue's log lines show theirs.
"""
import json
import time

from taskqueue.cli.progress import format_duration
from taskqueue.printable import printable
from taskqueue.protocol import events, taskids

#: How far before its id's time a task's history is read: the id is made by the
#: client's clock, the stream's chunks are stamped by the broker's, events by each
#: writer's; hosts whose clocks differ by less than this lose no event.
CLOCK_SKEW = 60.0
#: How far back `taskqueue task` reads for an id that tells no time (not a UUIDv7),
#: and `taskqueue events`: unless --since says otherwise.
TASK_SINCE = 3600.0
EVENTS_SINCE = 600.0
#: Width of the event column: the longest kind.
KIND_WIDTH = max(len(kind) for kind in events.KINDS)


def task_start(task_id, since, now):
    """(where to start reading a task's history, in seconds since the epoch; why there,
    in words): `since` seconds before `now` when given, else CLOCK_SKEW before the
    time of its UUIDv7 id, else TASK_SINCE before now."""
    if since is not None:
        return now - since, f"the last {format_duration(since)} (--since)"
    issued = taskids.issued_at(task_id)
    if issued is not None and issued <= now + CLOCK_SKEW:
        return issued - CLOCK_SKEW, f"{format_duration(CLOCK_SKEW)} before its id's time"
    return now - TASK_SINCE, (f"the last {format_duration(TASK_SINCE)} (its id tells no time; "
                              f"--since reads further back)")


def in_order(found):
    """A task's events in the order of their time (the writers' clocks); those of the
    same millisecond in the order they came."""
    return sorted(found, key=lambda event: event["at"])


def clock(at):
    """`2026-12-06 07:05:34.123`, local time; a time no calendar holds as a number."""
    try:
        stamp = time.localtime(at)
    except (OverflowError, OSError, ValueError):
        return f"@{at!r}"
    return time.strftime("%Y-%m-%d %H:%M:%S", stamp) + f".{int(at * 1000) % 1000:03d}"


def line(event, with_task=False):
    """One event as a line: time, kind, [type and task,] host, child[pid], then what it
    carries (attempt, redelivered, duration, delay, queue, trace), its reason last."""
    cells = [clock(event["at"]), _word(event["event"]).ljust(KIND_WIDTH)]
    if with_task:
        cells += [_word(event.get("type", "-")), _word(event["task"])]
    cells += [_word(event.get("host", "-")), _writer(event)]
    extras = []
    if "attempt" in event:
        extras.append(f"attempt={event['attempt']}")
    if event.get("redelivered"):
        extras.append("redelivered")
    for key in ("duration", "delay"):
        if key in event:
            extras.append(f"{key}={_seconds(event[key])}")
    for key in ("trace",):
        if key in event:
            extras.append(f"{key}={_word(event[key])}")
    if "reason" in event:
        extras.append(f"reason={printable(event['reason'])}")
    return "  ".join(cells + extras)


def _word(text):
    return printable(text, spaces=False)


def _writer(event):
    child = printable(event.get("child", "-"))
    return f"{child}[{event['pid']}]" if "pid" in event else child


def _seconds(value):
    return f"{value:.3f}s" if abs(value) < 10 else f"{value:.1f}s"


def summary(task_id, found, since_text):
    """The line after a task's events: its final state (the last final event), else
    that it has not finished; `found` in order (in_order). None when there are none."""
    if not found:
        return None
    shown = printable(task_id)
    types = {event["type"] for event in found if "type" in event}
    if len(types) == 1:
        shown += f" ({_word(types.pop())})"
    finals = [event for event in found if event["event"] in events.FINAL]
    count = f"{len(found)} event{'' if len(found) == 1 else 's'} since {since_text}"
    if not finals:
        last = found[-1]
        return (f"task {shown}: not finished yet; last {_word(last['event'])} on "
                f"{_word(last.get('host', '-'))} ({count})")
    final = finals[-1]
    where = f"on {_word(final.get('host', '-'))}"
    if final["event"] == "done":
        took = f" in {_seconds(final['duration'])}" if "duration" in final else ""
        return f"task {shown}: done {where}{took} ({count})"
    reason = f": {printable(final['reason'])}" if "reason" in final else ""
    return f"task {shown}: {_word(final['event'])} {where}{reason} ({count})"


def as_json(event):
    """One event as a JSON line, for scripts: what decode kept, escaped to ASCII."""
    return json.dumps(event, sort_keys=True)


def malformed_text(reader):
    """The one line on stderr about what was skipped; None when nothing was."""
    if not reader.malformed_events:
        return None
    return (f"{reader.malformed_events} malformed event(s) skipped, in "
            f"{reader.malformed_messages} message(s) of {reader.stream}")
