"""The scheduler (runtime/scheduler.py) in this process, on the real broker: leads taken
and handed over, slots fired once across a daylight saving change (an injected clock),
the history a new leader reads. The pools' side (two supervisors, SIGKILL) is
test_schedules_across_pools.py's."""
import datetime
import json
import zoneinfo

import gevent
import pytest

from support import BROKER_HOST, wait_for
from taskqueue.broker import amqp, schedulelog
from taskqueue.host.config import AmqpSettings
from taskqueue.protocol import firings
from taskqueue.protocol.schedules import Schedule, next_slot
from taskqueue.runtime.scheduler import Scheduler

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")


def settings_of(vhost, broker_port):
    return AmqpSettings(host=BROKER_HOST, port=broker_port, vhost=vhost)


class Clock:
    """A wall clock the test moves."""

    def __init__(self, at):
        self.at = at

    def __call__(self):
        return self.at


def started(settings, schedule_list, clock, name):
    session = amqp.Session(settings, f"test {name}").open()
    scheduler = Scheduler(session, schedule_list, settings, clock=clock, name=name)
    scheduler.start()
    return session, scheduler


def fired_ids(broker, worker_type):
    """The message ids of the tasks fired: in taskqueue (one hop with no worker queue
    bound: through the alternate exchange), or in the worker queue."""
    return [props.message_id for queue in ("taskqueue", f"worker_{worker_type}")
            for props, _ in broker.drain(queue)]


def local(*fields):
    return datetime.datetime(*fields, tzinfo=BERLIN).timestamp()


@pytest.mark.parametrize("when, start, end, expected", [
    # Clocks go forward at 02:00 on 2026-03-29: 02:30 does not exist that night.
    ("30 2 * * *", local(2026, 3, 27, 12), local(2026, 3, 31, 12),
     ["2026-03-28T01:30:00Z", "2026-03-29T01:30:00Z", "2026-03-30T00:30:00Z",
      "2026-03-31T00:30:00Z"]),
    # Clocks go back at 03:00 on 2026-10-25: 02:30 exists twice that night.
    ("30 2 * * *", local(2026, 10, 23, 12), local(2026, 10, 27, 12),
     ["2026-10-24T00:30:00Z", "2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z",
      "2026-10-27T01:30:00Z"]),
    ("*/30 2 * * *", local(2026, 10, 25, 1), local(2026, 10, 25, 4),
     ["2026-10-25T00:00:00Z", "2026-10-25T00:30:00Z"]),
])
def test_a_cron_schedule_fires_once_per_real_slot_across_a_daylight_saving_change(
        broker, vhost, broker_port, when, start, end, expected):
    schedule = Schedule("nightly", when, "recorder", b'{"n": 1}', timezone="Europe/Berlin")
    clock = Clock(start)
    session, scheduler = started(settings_of(vhost, broker_port), [schedule], clock, "dst")
    try:
        with gevent.Timeout(60):
            scheduler.turn()
            assert scheduler.leading == ["nightly"]
            # The clock walks minute by minute through the nights, and every 10 s of them
            # around each slot: a turn per step, as the loop would take them.
            while clock.at < end:
                upcoming = next_slot(schedule, clock.at)
                for at in (upcoming - 10, upcoming, upcoming + 1, upcoming + 30):
                    if clock.at < at <= end:
                        clock.at = at
                        scheduler.turn()
                clock.at = min(end, max(clock.at, upcoming) + 600)
                scheduler.turn()
        ids = fired_ids(broker, "recorder")
        assert ids == [f"sched:nightly:{slot}" for slot in expected]
    finally:
        session.close()


def test_one_of_two_schedulers_leads_and_the_other_takes_over_when_its_connection_goes(
        broker, vhost, broker_port):
    settings = settings_of(vhost, broker_port)
    schedule = Schedule("tick", "every 1s", "recorder")
    clock = Clock(1_900_000_000.5)
    first, one = started(settings, [schedule], clock, "one")
    second, two = started(settings, [schedule], clock, "two")
    try:
        with gevent.Timeout(60):
            one.turn()
            two.turn()
            assert (one.leading, two.leading) == (["tick"], [])
            for _ in range(3):
                clock.at += 1
                one.turn()
                two.turn()
            assert fired_ids(broker, "recorder") == [
                f"sched:tick:{firings.slot_id(1_900_000_000 + n)}" for n in (1, 2, 3)]
            # The leader's connection goes (its host died): the broker deletes the lead
            # queue, and the other takes the lead at its next try, knowing slot 3 fired.
            first.abort()
            clock.at += 0.2      # the same slot: nothing to fire again
            wait_for(lambda: two.turn() is not None and two.leading == ["tick"],
                     firings.LEAD_RETRY + 5, "the second scheduler's lead", interval=0.2)
            assert fired_ids(broker, "recorder") == []
            clock.at += 1
            two.turn()
            assert fired_ids(broker, "recorder") == [
                f"sched:tick:{firings.slot_id(1_900_000_004)}"]
        history = schedulelog.read_history(settings)
        assert history.fired["tick"] == 1_900_000_004
        assert history.lead["tick"][0].endswith(f"pid {__import__('os').getpid()}")
    finally:
        first.close()       # after its abort: waits until its socket is closed
        second.close()


def test_a_new_leader_fires_the_latest_slot_missed_once_or_none_when_told_to_skip(
        broker, vhost, broker_port):
    settings = settings_of(vhost, broker_port)
    latest = Schedule("latest", "every 5m", "recorder")
    skip = Schedule("skip", "every 5m", "recorder", missed="skip")
    start = 1_900_000_200      # a slot of both
    clock = Clock(start)
    session, scheduler = started(settings, [latest, skip], clock, "before")
    with gevent.Timeout(30):
        scheduler.turn()
        clock.at += 300
        scheduler.turn()
    assert sorted(fired_ids(broker, "recorder")) == [
        f"sched:latest:{firings.slot_id(start + 300)}", f"sched:skip:{firings.slot_id(start + 300)}"]
    session.close()
    # Down for an hour (or the clock stepped): 12 slots missed, the latest 2 minutes ago;
    # one fires, not a burst, and none of the schedule that skips what it missed.
    clock.at += 3600 + 120
    session, scheduler = started(settings, [latest, skip], clock, "after")
    try:
        with gevent.Timeout(30):
            scheduler.turn()
        assert fired_ids(broker, "recorder") == [f"sched:latest:{firings.slot_id(start + 3900)}"]
        # A clock stepped back an hour fires nothing of `latest` until it passes its last
        # slot again.
        clock.at -= 3600
        with gevent.Timeout(30):
            for _ in range(6):
                clock.at += 300
                scheduler.turn()
        assert not [task for task in fired_ids(broker, "recorder") if "latest" in task]
    finally:
        session.close()


def test_junk_in_the_schedules_stream_is_skipped(broker, vhost, broker_port):
    settings = settings_of(vhost, broker_port)
    session = amqp.Session(settings, "test junk").open()
    try:
        schedulelog.declare_stream(session)
        for body in (b"\x00" * 10, b"[]", json.dumps({"schedule": "a b", "why": "fired",
                                                      "slot": None, "at": 1}).encode(),
                     json.dumps({"schedule": "x", "why": "fired", "at": 1,
                                 "slot": "2026-13-45T00:00:00Z"}).encode(),
                     b"{" * 100_000, firings.record("ok", firings.FIRED, 1_900_000_000)):
            schedulelog.publish_record(session, body)
    finally:
        session.close()
    history = schedulelog.read_history(settings)
    assert history.fired == {"ok": 1_900_000_000} and history.junk == 5


def test_a_forged_firing_far_ahead_of_the_clock_does_not_stop_a_schedule(broker, vhost,
                                                                          broker_port):
    settings = settings_of(vhost, broker_port)
    session = amqp.Session(settings, "test forger").open()
    try:
        schedulelog.declare_stream(session)
        forged = datetime.datetime(9999, 12, 31, tzinfo=datetime.timezone.utc).timestamp()
        schedulelog.publish_record(session, firings.record("tick", firings.FIRED, forged))
    finally:
        session.close()
    clock = Clock(1_900_000_000)
    session, scheduler = started(settings, [Schedule("tick", "every 1s", "recorder")], clock,
                                 "victim")
    try:
        with gevent.Timeout(30):
            scheduler.turn()
            clock.at += 1
            scheduler.turn()
        assert fired_ids(broker, "recorder") == [f"sched:tick:{firings.slot_id(1_900_000_001)}"]
    finally:
        session.close()
