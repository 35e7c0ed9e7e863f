"""Schedules: when a periodic task is due, on the wall clock of a time zone (pure).

A schedule fires its task at each of its slots: the instants a cron expression
(`0 3 * * *`, in a time zone) or `every DURATION` names. Slots are instants (seconds
since the epoch, whole seconds); a slot's id is its UTC time (firings.slot_id), the
same on every pool.

- `every D`: the multiples of D since the epoch (UTC), so that every pool computes the
  same slots without talking: `every 1h` fires on the hour, `every 1d` at 00:00 UTC.
- cron: croniter walks the wall clock of the schedule's zone, never instants, and each
  wall time becomes an instant through zoneinfo. So on a daylight saving change a wall
  time that exists twice (01:30 as clocks go back) is one slot, the first; one that does
  not exist (02:30 as clocks go forward) is the instant it would have been at the old
  offset (03:30 new time), fired once; two wall times on one instant are one slot.

What fires (due()): the latest slot at or before now, newer than the last slot fired;
never the backlog. A clock stepped forward (or a scheduler that was down) thus fires
one slot at most, or none (missed = skip: only a slot at most GRACE seconds old); a
clock stepped back fires nothing until it passes the last slot fired again.

Where schedules come from (parse, from_entry_point, merge): a line `WHEN TYPE [WORKITEM]`
in the config's [schedules] or in a plugin package's entry point (group ENTRY_POINTS),
each checked whole before anything fires; the config's override a package's by name.
"""
import dataclasses
import datetime
import math
from dataclasses import dataclass
from typing import Optional
import zoneinfo

from taskqueue.protocol import expiry, firings, priorities, workitems
from taskqueue.protocol.durations import parse_duration
from taskqueue.protocol.routing import TYPE_PATTERN, TYPE_RULE

#: What to do with slots missed while no scheduler ran (or the clock jumped): fire the
#: latest of them once, or skip them all.
MISSED = ("latest", "skip")
#: Seconds a slot may be late and still be fired under missed = skip: a scheduler's
#: wake-up and a lead's hand-over take that long at most.
GRACE = 60.0
#: Shortest `every`: a second (slot ids count whole seconds).
MIN_EVERY = 1.0
#: Longest `every`: a leap year; a longer period is a typo (a slot id past year 9999 has
#: no UTC time to name it).
MAX_EVERY = 366 * 86400.0
UTC = datetime.timezone.utc
#: The zone of a cron schedule that names none: UTC, not the host's zone, because every
#: pool must compute the same slots; a host whose zone differs would shift `0 3 * * *`
#: by hours on the hand-over to it. Local time is asked for by name (NAME.timezone).
DEFAULT_TIMEZONE = "UTC"
#: The entry-point group of plugin packages' schedules (name: the schedule's name;
#: object: a line as in the config, or a dict of DICT_KEYS).
ENTRY_POINTS = "taskqueue.schedules"
#: The per-schedule settings (config: `NAME.SETTING`; entry point: dict keys).
SETTINGS = ("timezone", "missed", "expires", "priority")
DICT_KEYS = ("when", "type", "workitem") + SETTINGS
#: The shorthands taken for WHEN, and the cron expression each stands for (translated
#: here: croniter's own support for them differs between its releases).
SHORTHANDS = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@weekly": "0 0 * * 0",
              "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *"}
#: Longest schedule line (the workitem with it): a schedule's task is small, and a
#: 10 MB line is a mistake, not a workitem.
MAX_LINE = 64 * 1024
LINE = "WHEN TYPE [WORKITEM]"
WHEN_RULE = ("five cron fields (0 3 * * *), `every DURATION` (every 30s, every 5m) or one "
             f"of {', '.join(SHORTHANDS)}")
#: Where slots are looked for when a cron expression is checked: any instant does, the
#: fields repeat every 400 years at most (croniter gives up after 50 without a match).
_PROBE = 1767225600.0     # 2026-01-01T00:00:00Z


@dataclass(frozen=True)
class Schedule:
    """One schedule: fire a task for `worker_type` with `body` (the workitem as JSON
    bytes, as Client.submit sends it) at each slot of `when`."""
    name: str
    when: str                      # "every 30s", "0 3 * * *", as written
    worker_type: str
    body: bytes = b"{}"
    timezone: str = DEFAULT_TIMEZONE   # an IANA zone name, for cron expressions
    missed: str = "latest"         # one of MISSED
    expires: Optional[float] = None    # seconds: a task not started by then never starts
    priority: Optional[int] = None     # 0-9 (priorities.py)
    source: str = "config"         # "config", or the package that ships it

    @property
    def every(self):
        """The period of an `every` schedule (seconds), else None."""
        return every_seconds(self.when)


def every_seconds(when):
    """The seconds of `every DURATION`, or None when `when` is no `every` schedule."""
    words = when.split()
    if len(words) != 2 or words[0].lower() != "every":
        return None
    return parse_duration(words[1], low=MIN_EVERY)


def next_slot(schedule, after):
    """The first slot strictly after the instant `after`."""
    period = schedule.every
    if period is not None:
        return (math.floor(after / period) + 1) * period
    zone = zone_of(schedule)
    # Walk from the wall time `after` had at the smaller of today's and yesterday's
    # offsets: just after clocks went forward, a missing wall time (02:30 on the
    # spring change) is a slot still to come (at the old offset), yet behind the wall
    # clock (03:10), and a walk from the wall clock would skip it.
    wall = min(_wall(after, zone), _wall_at_offset(after, zone, after - 86400))
    while True:
        wall = _cron(schedule.when, wall).get_next(datetime.datetime)
        at = _instant(wall, zone)
        if at > after:
            return at


def latest_slot(schedule, at):
    """The last slot at or before the instant `at`."""
    period = schedule.every
    if period is not None:
        return math.floor(at / period) * period
    zone = zone_of(schedule)
    # From the later of the wall clock and the wall time under yesterday's offset: as
    # clocks go back, a wall time of the repeated hour (01:45 EDT) is a slot already
    # past, yet ahead of the wall clock (01:00 EST), and a walk from it would miss it.
    wall = max(_wall(at, zone), _wall_at_offset(at, zone, at - 86400)) \
        + datetime.timedelta(seconds=1)   # get_prev is strict
    while True:
        wall = _cron(schedule.when, wall).get_prev(datetime.datetime)
        slot = _instant(wall, zone)
        if slot <= at:
            return slot


def due(schedule, last, now, grace=GRACE):
    """The slot to fire at `now`, or None: the latest slot at or before now when it is
    newer than `last` (the last slot fired; with no history, the caller passes the time
    it took the lead: nothing before it fires), and under missed = skip only when it is
    at most `grace` seconds old."""
    slot = latest_slot(schedule, now)
    if last is not None and slot <= last:
        return None
    if schedule.missed == "skip" and now - slot > grace:
        return None
    return slot


def zone_of(schedule):
    """The schedule's zone (zoneinfo.ZoneInfo); ValueError naming it when unknown."""
    return zone(schedule.timezone)


def zone(name):
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name!r}; expected an IANA name such as "
                         "UTC or Europe/Berlin (see /usr/share/zoneinfo)") from None


def _wall(at, zone):
    """The wall-clock time (naive) in `zone` at the instant `at`, to the second."""
    return datetime.datetime.fromtimestamp(int(at), zone).replace(tzinfo=None, fold=0)


def _wall_at_offset(at, zone, then):
    """The wall time (naive) of the instant `at` under the UTC offset `zone` had at `then`."""
    offset = datetime.datetime.fromtimestamp(int(then), zone).utcoffset()
    return datetime.datetime.fromtimestamp(int(at), UTC).replace(tzinfo=None) + offset


def _instant(wall, zone):
    """The instant (seconds) of the naive wall time `wall` in `zone`: its first
    occurrence when it exists twice; when it does not exist, as the offset before the
    change would have it (zoneinfo's fold=0)."""
    return float(int(wall.replace(tzinfo=zone, fold=0).timestamp()))


def _cron(expression, start):
    from croniter import croniter      # only cron schedules need it, not every command
    return croniter(expression, start)


# -- where schedules come from: parse, from_entry_point, merge ---------------------

def parse(name, text, settings=None, source="config"):
    """The Schedule `name` of the line `text` (`WHEN TYPE [WORKITEM]`) with `settings`
    ({setting: value}, SETTINGS: strings as written or values as parse_setting
    returns them); ValueError saying what was expected, nothing fires yet."""
    check_name(name)
    if not isinstance(text, str):
        raise ValueError(f"expected a line {LINE}, not a {type(text).__name__}")
    _check_text(text)
    when, rest = _split_when(text.strip())
    worker_type, workitem = _split_type(rest)
    worker_type = _checked_type(worker_type)
    body = b"{}" if not workitem else encoded(workitems_parse(workitem))
    return _checked(Schedule(name, when, worker_type, body, source=source), settings)


def from_entry_point(name, value, source):
    """The Schedule a package's entry point `name` ships: `value` is a line as parse
    reads it, or a dict of DICT_KEYS (`workitem`: the value itself, not JSON text)."""
    if isinstance(value, str):
        return parse(name, value, None, source)
    if not isinstance(value, dict):
        raise ValueError(f"expected a line {LINE} or a dict with keys {', '.join(DICT_KEYS)}, "
                         f"not a {type(value).__name__}")
    unknown = sorted(str(key)[:60] for key in value if key not in DICT_KEYS)
    if unknown:
        raise ValueError(f"unknown key {', '.join(map(repr, unknown))}; expected keys among "
                         f"{', '.join(DICT_KEYS)}")
    for key in ("when", "type"):
        if not isinstance(value.get(key), str):
            raise ValueError(f"{key}: expected a string, not {_kind(value.get(key))}")
    check_name(name)
    _check_text(value["when"])
    when, rest = _split_when(value["when"].strip(), alone=True)
    body = encoded(value.get("workitem", {}))
    settings = {key: value[key] for key in SETTINGS if key in value}
    return _checked(Schedule(name, when, _checked_type(value["type"].strip()), body,
                             source=source), settings)


def merge(packaged, configured, off=(), settings=None):
    """The schedules that run, sorted by name: the config's (`configured`), and each
    package's (`packaged`) unless the config defines one of that name (it overrides it)
    or turns it off (`off`: names); `settings` ({name: {setting: value}}, parsed) are
    the config's settings for package schedules. Pure."""
    settings = settings or {}
    chosen = {schedule.name: schedule for schedule in packaged if schedule.name not in off}
    for name, own in settings.items():
        if name in chosen:
            chosen[name] = dataclasses.replace(chosen[name], **own)
    chosen.update((schedule.name, schedule) for schedule in configured)
    return tuple(chosen[name] for name in sorted(chosen))


def check_name(name):
    if not isinstance(name, str) or not firings.NAME.fullmatch(name):
        raise ValueError(f"schedule name {str(name)[:60]!r} is not 1-{firings.MAX_NAME} "
                         "letters, digits, '_', '.' or '-'")
    if name.rpartition(".")[2] in SETTINGS:
        raise ValueError(f"schedule name {name!r} ends like a setting (.{name.rpartition('.')[2]}); "
                         "expected another name")
    return name


def parse_setting(key, value):
    """One setting's value (a string as written, or the value itself): timezone an IANA
    zone, missed one of MISSED, expires a duration (seconds), priority 0-9; ValueError
    saying what was expected."""
    if key not in SETTINGS:
        raise ValueError(f"unknown setting {str(key)[:60]!r}; expected one of {', '.join(SETTINGS)}")
    text = value.strip() if isinstance(value, str) else value
    if key in ("timezone", "missed") and not isinstance(text, str):
        raise ValueError(f"{key}: expected a string, not {_kind(value)}")
    if key == "timezone":
        if text.lower() in ("localtime", "posixrules", "factory"):
            # /usr/share/zoneinfo/localtime is the host's zone under a name that is the
            # same everywhere: two hosts would fire one schedule at different instants.
            raise ValueError(f"timezone {text!r}: expected the IANA name of a zone (such as "
                             "Europe/Berlin), the same on every host")
        zone(text)
        return text
    if key == "missed":
        if text.lower() not in MISSED:
            raise ValueError(f"missed: expected one of {', '.join(MISSED)}")
        return text.lower()
    if key == "expires":
        return _parse_expires(text)
    return _parse_priority(text)


def encoded(workitem):
    """The workitem as the body Client.submit sends (client.workitem_bytes)."""
    try:
        return workitems.dumps(workitem)
    except RecursionError:
        raise ValueError("workitem: not usable JSON: nested too deeply") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"workitem: not JSON ({exc})") from None


def workitems_parse(text):
    try:
        return workitems.parse(text)
    except ValueError as exc:
        raise ValueError(f"workitem {text[:60]!r}: {exc}") from None


def _check_text(text):
    if len(text) > MAX_LINE:
        raise ValueError(f"expected a line of at most {MAX_LINE} characters, not {len(text)}")
    if "\0" in text:
        raise ValueError("expected no NUL character")
    if not text.strip():
        raise ValueError(f"expected {LINE}, found nothing")


def _split_when(text, alone=False):
    """(the cron expression or `every N`, the rest of the line); `alone`: `text` is WHEN
    only. Each form is checked here."""
    first = text.split(None, 1)[0].lower()
    count = 1 if first.startswith("@") else 2 if first == "every" else 5
    words = text.split(None, count)
    if first.startswith("@"):
        if first not in SHORTHANDS:
            raise ValueError(f"unknown shorthand {words[0][:30]!r}; expected {WHEN_RULE}")
        when = SHORTHANDS[first]
    elif first == "every":
        when = _checked_every(" ".join(words[:2]))
    else:
        when = " ".join(words[:5])
    if alone and len(words) > count:
        raise ValueError(f"when {text[:80]!r}: expected {WHEN_RULE}, and nothing after it")
    if not alone and len(words) <= count:
        raise ValueError(f"{text[:80]!r}: expected {LINE} with WHEN {WHEN_RULE} (the type is "
                         "missing)")
    if count == 5:
        when = _checked_cron(when)
    return when, (words[count] if len(words) > count else "")


def _split_type(rest):
    words = rest.split(None, 1)
    return words[0], (words[1].strip() if len(words) > 1 else "")


def _checked_every(when):
    words = when.split()
    if len(words) != 2:
        raise ValueError(f"{when[:40]!r}: expected `every DURATION` (every 30s, every 5m)")
    try:
        seconds = parse_duration(words[1], low=MIN_EVERY, high=MAX_EVERY)
    except ValueError as exc:
        raise ValueError(f"every {words[1][:30]!r}: {exc}") from None
    if seconds != int(seconds):
        raise ValueError(f"every {words[1][:30]!r}: expected a whole number of seconds (slots "
                         "are named to the second)")
    return f"every {words[1]}"


def _checked_cron(when):
    from croniter import croniter
    fields = when.split()
    if len(fields) != 5 or not croniter.is_valid(when):
        raise ValueError(f"{when[:80]!r}: expected {WHEN_RULE}: minute hour day-of-month "
                         "month day-of-week, as crontab(5) has them")
    probe = Schedule("probe", when, "probe")
    try:
        next_slot(probe, _PROBE)
    except (ValueError, KeyError, IndexError, OverflowError):   # croniter's bad date
        raise ValueError(f"{when!r} never fires (no such date); expected a cron expression "
                         "that names an existing day") from None
    return when


def _checked_type(worker_type):
    if not TYPE_PATTERN.match(worker_type):
        hint = " (a sixth cron field? cron expressions here have five)" \
            if worker_type and set(worker_type) <= set("*0123456789,-/?LW#") else ""
        raise ValueError(f"worker type {worker_type[:60]!r} is not {TYPE_RULE}{hint}")
    return worker_type


def _checked(schedule, settings):
    """`schedule` with `settings` applied, each checked."""
    given = {}
    for key, value in (settings or {}).items():
        given[key] = parse_setting(key, value)
    return dataclasses.replace(schedule, **given)


def _parse_expires(value):
    if isinstance(value, str):
        try:
            value = parse_duration(value, low=1.0, high=expiry.MAX_SECONDS)
        except ValueError as exc:
            raise ValueError(f"expires: {exc}") from None
    return float(expiry.checked_seconds(value))


def _parse_priority(value):
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit()):
            raise ValueError(f"priority {value[:20]!r}: expected an integer from 0 to "
                             f"{priorities.HIGHEST}")
        value = int(value)
    return priorities.checked(value)


def _kind(value):
    return "nothing" if value is None else f"a {type(value).__name__}"
