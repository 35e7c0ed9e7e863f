"""`taskqueue schedules [--json]`: each schedule this host knows (config and plugin
packages), its source, its next and last firing, and who leads it; then the schedules
other pools fire (found in the schedules stream, not in this host's config).

The last firing and the last lead taken come from the schedules stream (read whole,
protocol/firings.py); whether a lead is held now from the broker (a passive declare of
the schedule's lead queue: refused 405 while a connection holds it).
"""
import json
import time

from taskqueue.broker import blocking, schedulelog
from taskqueue.cli.startup import EXIT_OK, load_config
from taskqueue.printable import printable
from taskqueue.protocol import firings, schedules

SCHEDULES_EXIT_CODES = """\
A schedule fires on one pool only: the one that holds its lead (docs/06-operating.md,
"Periodic tasks").
"lead" says which host and process took it last, and whether it is held now.

exit status: 0 shown; 2 bad config; 4 no broker could be reached.
"""


def cmd_schedules(args):
    cfg, _ = load_config(args, check_users=False, with_schedules=True)
    history = schedulelog.read_history(cfg.amqp, name="taskqueue schedules")
    known = {schedule.name for schedule in cfg.schedules}
    others = sorted((set(history.fired) | set(history.lead)) - known)
    held = _leads_held(cfg.amqp, [s.name for s in cfg.schedules] + others)
    now = time.time()
    rows = [_row(schedule, history, held, now) for schedule in cfg.schedules]
    rows += [_other_row(name, history, held) for name in others]
    if args.json:
        print(json.dumps({"schedules": rows, "junk_records": history.junk}, indent=2))
    else:
        _print_table(rows, history.junk)
    return EXIT_OK


def _leads_held(settings, names):
    """{name: whether some connection holds its lead queue now}."""
    found = {}
    connection = blocking.blocking_connect(settings, "taskqueue schedules")
    try:
        channel = None
        for name in names:
            if channel is None or not channel.is_open:
                channel = connection.channel()
            found[name], _ = schedulelog.lead_is_held(channel, name)
    finally:
        blocking.close_within(connection, 5)
    return found


def _row(schedule, history, held, now):
    lead = history.lead.get(schedule.name)
    return {
        "name": schedule.name, "when": schedule.when, "timezone": schedule.timezone,
        "type": schedule.worker_type, "source": schedule.source, "missed": schedule.missed,
        "next": _stamp(schedules.next_slot(schedule, now)),
        "last": _stamp(history.fired.get(schedule.name)),
        "lead": _lead(lead, held.get(schedule.name)),
    }


def _other_row(name, history, held):
    return {"name": name, "when": None, "timezone": None, "type": None,
            "source": "another pool (not in this host's config)", "missed": None,
            "next": None, "last": _stamp(history.fired.get(name)),
            "lead": _lead(history.lead.get(name), held.get(name))}


def _lead(lead, is_held):
    holder, since = lead if lead else (None, None)
    return {"held": bool(is_held), "holder": holder if is_held else None,
            "last_holder": holder, "since": _stamp(since)}


def _stamp(at):
    return None if at is None else firings.slot_id(at)


def _print_table(rows, junk):
    if not rows:
        print("no schedules (none in the config, none from plugin packages, none fired on "
              "this vhost)")
        return
    header = ("NAME", "WHEN", "TYPE", "SOURCE", "NEXT (UTC)", "LAST (UTC)", "LEAD")
    lines = [header] + [(
        printable(row["name"]),
        printable(_when_text(row)),
        printable(row["type"] or "-"), printable(row["source"]), row["next"] or "-",
        row["last"] or "never", _lead_text(row["lead"])) for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[-1])
    if junk:
        print(f"\n{junk} records of {firings.STREAM} were no record of taskqueue's (skipped)")


def _when_text(row):
    if not row["when"]:
        return "-"
    if schedules.every_seconds(row["when"]) is not None:
        return row["when"]
    return f"{row['when']} ({row['timezone']})"


def _lead_text(lead):
    if lead["held"]:
        return f"held by {printable(lead['holder'] or '?')} since {lead['since'] or '?'}"
    if lead["last_holder"]:
        return f"not held (last: {printable(lead['last_holder'])})"
    return "not held"
