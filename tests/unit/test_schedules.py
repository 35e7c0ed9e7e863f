"""Schedules (protocol/schedules.py, issue 24): the line a config or a package writes, its
slots on a zone's wall clock across daylight saving changes, what is due after a clock
step, and how package schedules merge under the config's (runtime/plugins.py)."""
import calendar
import time
from types import SimpleNamespace

import pytest

from taskqueue.protocol import schedules
from taskqueue.protocol.schedules import Schedule, due, latest_slot, next_slot, parse
from taskqueue.runtime import plugins


def at(text):
    """The instant of a UTC time written `2026-03-29T01:30:00Z`."""
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))


def utc(instant):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(instant))


def slots(schedule, start, end):
    """The slots after `start` up to `end` (UTC texts), as UTC texts."""
    found, instant = [], at(start)
    while True:
        instant = next_slot(schedule, instant)
        if instant > at(end):
            return found
        found.append(utc(instant))


def cron(when, zone="UTC", **settings):
    return parse("s", f"{when} report", {"timezone": zone, **settings})


# -- the line ------------------------------------------------------------------------

def test_line_with_cron_type_and_workitem_gives_the_body_submit_would_send():
    schedule = parse("nightly", '0 3 * * * report {"full": true, "days": [1, 2]}')
    assert schedule == Schedule("nightly", "0 3 * * *", "report", b'{"full":true,"days":[1,2]}')
    assert schedule.timezone == "UTC" and schedule.source == "config"


def test_workitem_defaults_to_an_empty_object_and_may_be_any_json_value():
    assert parse("a", "every 30s echo").body == b"{}"
    assert parse("a", 'every 30s echo "text"').body == b'"text"'
    assert parse("a", "every 30s echo [1,\n 2]").body == b"[1,2]"


def test_every_keeps_its_words_and_shorthands_become_cron_fields():
    assert parse("a", "every 5m echo").when == "every 5m"
    assert parse("a", "every 5m echo").every == 300
    assert parse("a", "@daily echo").when == "0 0 * * *"
    assert parse("a", "@HOURLY echo").when == "0 * * * *"
    assert parse("a", "@weekly echo").when == "0 0 * * 0"
    assert parse("a", "@monthly echo").when == "0 0 1 * *"
    assert parse("a", "@yearly echo").when == "0 0 1 1 *"


def test_settings_are_parsed_from_their_text():
    schedule = parse("a", "0 3 * * * echo", {"timezone": "Europe/Berlin", "missed": "SKIP",
                                             "expires": "2h", "priority": "7"}, "package p 1")
    assert (schedule.timezone, schedule.missed, schedule.expires, schedule.priority,
            schedule.source) == ("Europe/Berlin", "skip", 7200.0, 7, "package p 1")


@pytest.mark.parametrize("text, expected", [
    ("0 0 30 2 * echo", "'0 0 30 2 *' never fires (no such date)"),
    ("0 0 31 4 * echo", "never fires"),
    ("61 * * * * echo", "expected five cron fields"),
    ("0 3 * * echo", "(the type is missing)"),
    ("* * * * * * echo", "a sixth cron field?"),
    ("every 0s echo", "every '0s': expected a duration from 1s to 366d"),
    ("every 1.5s echo", "expected a whole number of seconds"),
    ("every 400d echo", "from 1s to 366d"),
    ("every soon echo", "every 'soon': expected a duration"),
    ("every 1s", "(the type is missing)"),
    ("@reboot echo", "unknown shorthand '@reboot'"),
    ("every 1s bad:type", "worker type 'bad:type' is not 1-200 characters"),
    ("every 1s echo {oops", "workitem '{oops': not valid JSON"),
    ("every 1s echo NaN", "not valid JSON (NaN is not JSON)"),
    ("every 1s echo not json", "not valid JSON"),
    ("", "expected WHEN TYPE [WORKITEM], found nothing"),
    ("   ", "found nothing"),
])
def test_bad_line_says_what_was_expected(text, expected):
    with pytest.raises(ValueError) as info:
        parse("a", text)
    assert expected in str(info.value)


@pytest.mark.parametrize("settings, expected", [
    ({"timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'; expected an IANA name"),
    ({"timezone": "../../etc/passwd"}, "unknown time zone"),
    ({"timezone": "localtime"}, "the same on every host"),
    ({"missed": "all"}, "missed: expected one of latest, skip"),
    ({"expires": "0"}, "expires: expected a duration from 1s"),
    ({"expires": "-5"}, "expires"),
    ({"priority": "10"}, "priority 10: expected an integer from 0 to 9"),
    ({"priority": "high"}, "priority 'high': expected an integer from 0 to 9"),
    ({"colour": "red"}, "unknown setting 'colour'; expected one of timezone, missed"),
])
def test_bad_setting_says_what_was_expected(settings, expected):
    with pytest.raises(ValueError) as info:
        parse("a", "0 3 * * * echo", settings)
    assert expected in str(info.value)


@pytest.mark.parametrize("name", ["a b", "a:b", "", "x" * 101, "caf\u00e9", "a/b", "a\x00",
                                  "n.timezone", "n.priority", None, 5])
def test_unusable_schedule_name_is_refused(name):
    with pytest.raises(ValueError, match="schedule name"):
        parse(name, "every 1s echo")


def test_names_may_use_dots_dashes_and_upper_case():
    assert parse("Billing.nightly-run_2", "every 1s echo").name == "Billing.nightly-run_2"


def test_hostile_lines_are_refused_quickly_with_a_sentence():
    started = time.monotonic()
    cases = [("every 1s echo " + "x" * 10 * 2**20, "expected a line of at most 65536"),
             ("every 1s echo {\"a\": \"\x00\"}", "expected no NUL character"),
             ("every 1s echo " + "[" * 30000 + "]" * 30000, "nested too deeply"),
             ("0 3 * * * " + "t" * 201, "is not 1-200 characters")]
    for text, expected in cases:
        with pytest.raises(ValueError) as info:
            parse("a", text)
        assert expected in str(info.value) and len(str(info.value)) < 500
    assert time.monotonic() - started < 5


def test_json_nested_as_deep_as_the_dispatcher_takes_is_fine():
    assert parse("a", "every 1s echo " + "[" * 50 + "]" * 50).body.startswith(b"[[[")


# -- a package's entry point -----------------------------------------------------------

def test_entry_point_as_a_line_or_a_dict_gives_the_same_schedule():
    line = schedules.from_entry_point("n", 'every 5m report {"a": 1}', "package p 1.0")
    table = schedules.from_entry_point("n", {"when": "every 5m", "type": "report",
                                             "workitem": {"a": 1}}, "package p 1.0")
    assert line == table and line.source == "package p 1.0"


def test_entry_point_dict_takes_the_settings_as_values():
    schedule = schedules.from_entry_point("n", {"when": "30 2 * * *", "type": "t",
                                                "timezone": "Europe/Berlin", "missed": "skip",
                                                "expires": 600, "priority": 3}, "package p 1")
    assert (schedule.when, schedule.timezone, schedule.missed, schedule.expires,
            schedule.priority, schedule.body) == ("30 2 * * *", "Europe/Berlin", "skip", 600.0,
                                                  3, b"{}")


@pytest.mark.parametrize("value, expected", [
    ({"when": "every 5m", "type": "t", "colour": 1}, "unknown key 'colour'; expected keys among"),
    ({"type": "t"}, "when: expected a string, not nothing"),
    ({"when": "every 5m", "type": 3}, "type: expected a string, not a int"),
    ({"when": "every 5m t", "type": "t"}, "and nothing after it"),
    ({"when": "every 5m", "type": "t", "workitem": {1, 2}}, "workitem: not JSON"),
    ({"when": "every 5m", "type": "t", "workitem": float("nan")}, "workitem: not JSON"),
    ({"when": "every 5m", "type": "t", "priority": True}, "expected an integer from 0 to 9"),
    ({"when": "every 5m", "type": "t", "expires": "soon"}, "expires: expected a duration"),
    ({"when": "every 5m", "type": "t", "timezone": 1}, "timezone: expected a string"),
    (42, "expected a line WHEN TYPE [WORKITEM] or a dict"),
    (None, "expected a line"),
])
def test_bad_entry_point_value_says_what_was_expected(value, expected):
    with pytest.raises(ValueError) as info:
        schedules.from_entry_point("n", value, "package p 1")
    assert expected in str(info.value)


# -- slots: every ----------------------------------------------------------------------

def test_every_fires_on_multiples_of_its_period_since_the_epoch():
    hourly = parse("a", "every 1h echo")
    assert slots(hourly, "2026-05-01T10:20:00Z", "2026-05-01T12:00:00Z") == [
        "2026-05-01T11:00:00Z", "2026-05-01T12:00:00Z"]
    seven = parse("a", "every 7s echo")
    assert next_slot(seven, 100.0) == 105.0 and next_slot(seven, 105.0) == 112.0
    assert latest_slot(seven, 105.0) == 105.0 and latest_slot(seven, 104.9) == 98.0


def test_every_ignores_the_zone_and_daylight_saving():
    schedule = parse("a", "every 1h echo", {"timezone": "Europe/Berlin"})
    assert len(slots(schedule, "2026-03-29T00:00:00Z", "2026-03-29T04:00:00Z")) == 4


# -- slots: cron across daylight saving ------------------------------------------------

def test_berlin_spring_forward_a_missing_wall_time_fires_once_at_the_old_offset():
    # 2026-03-29: 02:00 CET becomes 03:00 CEST; 02:30 does not exist that day.
    schedule = cron("30 2 * * *", "Europe/Berlin")
    assert slots(schedule, "2026-03-27T12:00:00Z", "2026-03-30T12:00:00Z") == [
        "2026-03-28T01:30:00Z", "2026-03-29T01:30:00Z", "2026-03-30T00:30:00Z"]


def test_berlin_spring_forward_two_wall_times_on_one_instant_are_one_slot():
    # 02:00 (missing, at the old offset) and 03:00 CEST are both 01:00Z.
    schedule = cron("0 * * * *", "Europe/Berlin")
    assert slots(schedule, "2026-03-28T23:30:00Z", "2026-03-29T02:00:00Z") == [
        "2026-03-29T00:00:00Z", "2026-03-29T01:00:00Z", "2026-03-29T02:00:00Z"]


def test_berlin_fall_back_a_repeated_wall_time_fires_once_the_first_time():
    # 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 happens twice (00:30Z and 01:30Z).
    schedule = cron("30 2 * * *", "Europe/Berlin")
    assert slots(schedule, "2026-10-24T12:00:00Z", "2026-10-26T12:00:00Z") == [
        "2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]


def test_berlin_fall_back_each_quarter_hour_fires_once_not_twice():
    schedule = cron("*/15 * * * *", "Europe/Berlin")
    assert slots(schedule, "2026-10-24T23:59:00Z", "2026-10-25T02:00:00Z") == [
        "2026-10-25T00:00:00Z", "2026-10-25T00:15:00Z", "2026-10-25T00:30:00Z",
        "2026-10-25T00:45:00Z", "2026-10-25T02:00:00Z"]


def test_berlin_daily_at_3_keeps_local_time_across_both_changes():
    schedule = cron("0 3 * * *", "Europe/Berlin")
    assert slots(schedule, "2026-03-28T00:00:00Z", "2026-03-29T12:00:00Z") == [
        "2026-03-28T02:00:00Z", "2026-03-29T01:00:00Z"]
    assert slots(schedule, "2026-10-24T00:00:00Z", "2026-10-25T12:00:00Z") == [
        "2026-10-24T01:00:00Z", "2026-10-25T02:00:00Z"]


def test_new_york_spring_forward_and_fall_back():
    # 2026-03-08: 02:00 EST becomes 03:00 EDT. 2026-11-01: 02:00 EDT becomes 01:00 EST.
    assert slots(cron("30 2 * * *", "America/New_York"), "2026-03-07T12:00:00Z",
                 "2026-03-09T12:00:00Z") == ["2026-03-08T07:30:00Z", "2026-03-09T06:30:00Z"]
    assert slots(cron("30 1 * * *", "America/New_York"), "2026-10-31T12:00:00Z",
                 "2026-11-02T12:00:00Z") == ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]


def test_latest_slot_is_the_one_next_slot_gives_from_before_it():
    schedule = cron("30 2 * * *", "Europe/Berlin")
    for slot in ("2026-03-29T01:30:00Z", "2026-10-25T00:30:00Z"):
        assert latest_slot(schedule, at(slot)) == at(slot)
        assert latest_slot(schedule, at(slot) + 3600) == at(slot)
        assert next_slot(schedule, at(slot) - 1) == at(slot)


@pytest.mark.parametrize("zone, day", [("Europe/Berlin", "2026-03-29"),
                                       ("Europe/Berlin", "2026-10-25"),
                                       ("America/New_York", "2026-03-08"),
                                       ("America/New_York", "2026-11-01")])
@pytest.mark.parametrize("when", ["30 2 * * *", "*/15 * * * *", "0 1-3 * * *"])
def test_next_and_latest_slot_agree_with_the_slots_from_any_instant_around_a_change(
        zone, day, when):
    # Regression: just after clocks went forward, next_slot walked from the wall clock
    # and skipped the missing wall time's slot, which was still to come.
    schedule = cron(when, zone)
    start, end = f"{day}T00:00:00Z", f"{day}T12:00:00Z"
    every = [at(slot) for slot in slots(schedule, utc(at(start) - 2 * 86400),
                                        utc(at(end) + 2 * 86400))]
    for instant in range(int(at(start)), int(at(end)), 300):
        assert next_slot(schedule, instant) == min(s for s in every if s > instant), utc(instant)
        assert latest_slot(schedule, instant) == max(s for s in every if s <= instant), utc(instant)


# -- what is due: clock steps, downtime, skip vs latest ---------------------------------

def test_due_fires_each_slot_once_as_the_clock_moves_on():
    schedule = parse("a", "every 10s echo")
    assert due(schedule, None, 1005.0) == 1000.0
    assert due(schedule, 1000.0, 1009.9) is None
    assert due(schedule, 1000.0, 1010.0) == 1010.0


def test_clock_stepped_forward_fires_the_latest_slot_once_not_the_backlog():
    schedule = parse("a", "every 10s echo")
    assert due(schedule, 1000.0, 1000.0 + 86400 + 3) == 1000.0 + 86400
    assert due(schedule, 1000.0 + 86400, 1000.0 + 86400 + 5) is None


def test_clock_stepped_back_fires_nothing_until_it_passes_the_last_slot_again():
    schedule = parse("a", "every 10s echo")
    assert due(schedule, 5000.0, 1000.0) is None
    assert due(schedule, 5000.0, 5009.0) is None
    assert due(schedule, 5000.0, 5010.0) == 5010.0


def test_missed_latest_fires_an_old_slot_after_downtime_and_skip_does_not():
    latest = cron("0 3 * * *")
    skip = cron("0 3 * * *", missed="skip")
    slot = at("2026-05-01T03:00:00Z")
    late = slot + 2 * 3600
    assert due(latest, slot - 86400, late) == slot
    assert due(skip, slot - 86400, late) is None
    assert due(skip, slot - 86400, slot + schedules.GRACE) == slot


# -- merging packages' schedules under the config's -------------------------------------

def packaged(name, line, dist="pkg"):
    return schedules.from_entry_point(name, line, f"package {dist} 1.0")


def test_config_overrides_a_package_schedule_of_the_same_name_and_off_removes_one():
    ships = (packaged("nightly", "0 3 * * * report"), packaged("hourly", "@hourly report"),
             packaged("spare", "every 1m report"))
    own = (parse("nightly", "0 4 * * * report"), parse("mine", "every 5m echo"))
    merged = schedules.merge(ships, own, off=("spare",))
    assert [(s.name, s.when, s.source) for s in merged] == [
        ("hourly", "0 * * * *", "package pkg 1.0"), ("mine", "every 5m", "config"),
        ("nightly", "0 4 * * *", "config")]


def test_config_settings_apply_to_a_package_schedule():
    merged = schedules.merge((packaged("nightly", "0 3 * * * report"),), (),
                             settings={"nightly": {"timezone": "Europe/Berlin", "priority": 5}})
    assert (merged[0].timezone, merged[0].priority, merged[0].source) == (
        "Europe/Berlin", 5, "package pkg 1.0")


class FakeEntryPoint:
    """An entry point of group taskqueue.schedules as importlib.metadata gives it."""

    def __init__(self, name, value, dist="tq-sched-pkg", raises=None):
        self.name, self.value, self.object, self.raises = name, f"pkg.schedules:{name}", value, raises
        self.dist = SimpleNamespace(name=dist, version="2.1")

    def load(self):
        if self.raises is not None:
            raise self.raises
        return self.object


def test_package_schedules_load_and_a_broken_one_is_left_out_naming_package_and_reason():
    found = [FakeEntryPoint("good", "every 1m report"),
             FakeEntryPoint("typo", "every 1m"),
             FakeEntryPoint("crash", None, raises=ImportError("no module named nope")),
             FakeEntryPoint("exits", None, raises=SystemExit(3))]
    loaded, problems = plugins.load_schedules(found)
    assert [(s.name, s.source) for s in loaded] == [("good", "package tq-sched-pkg 2.1")]
    assert len(problems) == 3
    crash = next(p for p in problems if "'crash'" in p)
    assert crash.startswith("error: schedule 'crash' of package tq-sched-pkg 2.1 (entry point "
                            "taskqueue.schedules crash = pkg.schedules:crash) left out:")
    assert "ImportError: no module named nope" in crash
    assert any("'typo'" in p and "the type is missing" in p for p in problems)
    assert any("'exits'" in p and "SystemExit" in p for p in problems)


def test_a_schedule_shipped_by_two_packages_is_left_out_naming_both():
    found = [FakeEntryPoint("dup", "every 1m a", dist="one"),
             FakeEntryPoint("dup", "every 1m b", dist="two")]
    loaded, problems = plugins.load_schedules(found)
    assert loaded == ()
    assert "schedule 'dup' is shipped twice" in problems[0]
    assert "one 2.1" in problems[0] and "two 2.1" in problems[0]
