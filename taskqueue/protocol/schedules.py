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
"""
import datetime
import math
from dataclasses import dataclass
from typing import Optional
import zoneinfo

#: What to do with slots missed while no scheduler ran (or the clock jumped): fire the
#: latest of them once, or skip them all.
MISSED = ("latest", "skip")
#: Seconds a slot may be late and still be fired under missed = skip: a scheduler's
#: wake-up and a lead's hand-over take that long at most.
GRACE = 60.0
#: Shortest `every`: a second (slot ids count whole seconds).
MIN_EVERY = 1.0
UTC = datetime.timezone.utc


@dataclass(frozen=True)
class Schedule:
    """One schedule: fire a task for `worker_type` with `body` (the workitem as JSON
    bytes, as Client.submit sends it) at each slot of `when`."""
    name: str
    when: str                      # "every 30s", "0 3 * * *", as written
    worker_type: str
    body: bytes = b"{}"
    timezone: str = "UTC"          # an IANA zone name, for cron expressions
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
    from taskqueue.host.config import parse_duration
    return parse_duration(words[1], low=MIN_EVERY)


def next_slot(schedule, after):
    """The first slot strictly after the instant `after`."""
    period = schedule.every
    if period is not None:
        return (math.floor(after / period) + 1) * period
    zone = zone_of(schedule)
    wall = _wall(after, zone)
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
    wall = _wall(at, zone) + datetime.timedelta(seconds=1)   # get_prev is strict
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


def _instant(wall, zone):
    """The instant (seconds) of the naive wall time `wall` in `zone`: its first
    occurrence when it exists twice; when it does not exist, as the offset before the
    change would have it (zoneinfo's fold=0)."""
    return float(int(wall.replace(tzinfo=zone, fold=0).timestamp()))


def _cron(expression, start):
    from croniter import croniter      # only cron schedules need it, not every command
    return croniter(expression, start)
