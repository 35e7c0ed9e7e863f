"""What `taskqueue task` and `taskqueue events` print, where they start reading and when
they stop (cli/eventview.py, cli/taskevents.py, broker/eventstream.py): pure parts,
and hostile events as events.decode hands them over."""
import json
import time

import pytest

from taskqueue.broker import eventstream
from taskqueue.broker.eventstream import EventReader, mentioning, reached
from taskqueue.cli import eventview, main
from taskqueue.cli.taskevents import check_task_id
from taskqueue.errors import InputError
from taskqueue.protocol import events, taskids

NOW = 1_800_000_000.0


def event(kind="started", task="t1", at=NOW, **fields):
    return {"event": kind, "task": task, "type": "resize", "at": at, "host": "h1",
            "child": "resize#0", "pid": 4711, **fields}


# -- where reading starts ------------------------------------------------------------

def test_a_uuid7_task_is_read_from_a_minute_before_its_ids_time():
    task_id = taskids.new_id(now=NOW - 1800)
    start, why = eventview.task_start(task_id, None, NOW)
    assert start == pytest.approx(NOW - 1800 - eventview.CLOCK_SKEW, abs=0.001)
    assert why == "1m00s before its id's time"


def test_since_overrides_the_ids_time():
    start, why = eventview.task_start(taskids.new_id(now=NOW), 7200.0, NOW)
    assert (start, why) == (NOW - 7200, "the last 2h00m (--since)")


@pytest.mark.parametrize("task_id", ["1f3a" * 8, "my-own-id", taskids.new_id(now=NOW + 3600)])
def test_an_id_that_tells_no_time_or_a_future_one_is_read_from_an_hour_back(task_id):
    start, why = eventview.task_start(task_id, None, NOW)
    assert start == NOW - eventview.TASK_SINCE
    assert "its id tells no time" in why


# -- the lines -----------------------------------------------------------------------

def test_an_event_line_has_time_kind_host_writer_and_what_it_carries_reason_last():
    at = time.mktime((2026, 12, 6, 7, 5, 34, 0, 0, -1)) + 0.123
    text = eventview.line(event("retried", at=at, attempt=2, redelivered=True, delay=4.0,
                                duration=0.0123, trace="abc",
                                reason="raised ValueError: bad"))
    assert text == ("2026-12-06 07:05:34.123  retried    h1  resize#0[4711]  attempt=2  "
                    "redelivered  duration=0.012s  delay=4.000s  "
                    "trace=abc  reason=raised ValueError: bad")


def test_events_lines_name_the_type_and_task_and_what_is_missing_shows_as_a_dash():
    text = eventview.line({"event": "dead", "task": "t9", "at": NOW}, with_task=True)
    assert text.split()[2:] == ["dead", "-", "t9", "-", "-"]


def test_every_field_a_publisher_chose_is_escaped_and_stays_one_line():
    hostile = event("\x1b[2Jdone", task="t\x1b]0;owned\x07", host="h\r\nforged", child="c\u202e",
                    trace="t\x9b", reason="line1\nline2\x1b[31m")
    for text in (eventview.line(hostile), eventview.line(hostile, with_task=True),
                 eventview.summary(hostile["task"], [hostile], "then")):
        assert text.isprintable(), text
        assert "\\x1b" in text
    assert "h\\r\\nforged" in eventview.line(hostile)
    assert "c\\u202e[4711]" in eventview.line(hostile)


@pytest.mark.parametrize("at", [1e300, -1e300, 2.0**63])
def test_a_time_no_calendar_holds_is_shown_as_a_number(at):
    assert eventview.clock(at) == f"@{at!r}"
    assert eventview.line(event(at=at)).startswith(f"@{at!r}  started")


def test_events_are_ordered_by_time_those_of_one_millisecond_as_they_came():
    found = [event("done", at=NOW + 2), event("submitted", at=NOW), event("started", at=NOW),
             event("routed", at=NOW + 1)]
    assert [e["event"] for e in eventview.in_order(found)] == [
        "submitted", "started", "routed", "done"]


def test_the_json_line_is_the_decoded_event_in_ascii():
    text = eventview.as_json(event(reason="é\x1b"))
    assert text.isascii() and text.isprintable()
    assert json.loads(text) == event(reason="é\x1b")


# -- the summary ---------------------------------------------------------------------

def test_the_summary_names_the_last_final_event():
    found = [event("submitted"), event("started"), event("done", host="h2", duration=0.25)]
    assert eventview.summary("t1", found, "S") == (
        "task t1 (resize): done on h2 in 0.250s (3 events since S)")
    found = [event("started"), event("failed", reason="raised RuntimeError: boom")]
    assert eventview.summary("t1", found, "S") == (
        "task t1 (resize): failed on h1: raised RuntimeError: boom (2 events since S)")


def test_a_task_without_a_final_event_has_not_finished_and_none_has_no_summary():
    assert eventview.summary("t1", [event("submitted", host="c1")], "S") == (
        "task t1 (resize): not finished yet; last submitted on c1 (1 event since S)")
    assert eventview.summary("t1", [], "S") is None


def test_events_of_several_types_name_none():
    found = [event("submitted"), dict(event("done"), type="other")]
    assert eventview.summary("t1", found, "S").startswith("task t1: done on h1 ")


# -- what the reader takes and when it stops ----------------------------------------

def test_the_reader_counts_what_is_no_event_and_drops_events_before_its_start():
    reader = EventReader(None, start=NOW)
    origin = {"host": "h1", "child": "resize#0", "pid": 4711}    # event()'s writer
    written = [{k: v for k, v in event(at=at).items() if k not in origin} for at in (NOW, NOW - 1)]
    assert reader._taken(events.encode(origin, written)) == [event(at=NOW)]
    assert reader._taken(b'{"events": ["not an event", [1], {"event": "x"}]}') == []
    assert reader._taken(b"\xff\xfe") == []
    assert reader._taken(b"x" * (events.MAX_MESSAGE + 1)) == []
    assert (reader.malformed_events, reader.malformed_messages) == (5, 3)
    assert eventview.malformed_text(reader) == (
        "5 malformed event(s) skipped, in 3 message(s) of taskqueue_events")
    assert eventview.malformed_text(EventReader(None, start=NOW)) is None


def test_a_batch_stamped_past_the_start_ends_the_read_but_not_a_forged_future_one():
    began = NOW
    assert not reached(None, began)
    assert not reached(True, began)
    assert not reached(int(began), began)
    assert not reached(int(began + eventstream.REACHED_MARGIN), began)
    assert reached(int(began + eventstream.REACHED_MARGIN) + 1, began)
    assert not reached(int(began + eventstream.FORGED_FUTURE) + 1, began)
    assert not reached(2**62, began)


def test_only_batches_naming_a_task_as_events_encode_writes_it_are_decoded():
    task_id = taskids.new_id()
    assert mentioning(task_id) == f'"{task_id}"'.encode()
    assert mentioning(task_id) in events.encode({"host": "h"}, [event(task=task_id)])
    for awkward in ('a"b', "a\\b", "é", "a/b", "a\nb"):
        assert mentioning(awkward) is None


# -- the command line ----------------------------------------------------------------

@pytest.mark.parametrize("task_id", ["", "x" * (events.MAX_TEXT + 1)])
def test_a_task_id_events_could_not_name_is_refused(task_id):
    with pytest.raises(InputError, match="expected 1 to 200 characters"):
        check_task_id(task_id)


@pytest.mark.parametrize("argv", [["task", "t1", "--since", "soon"],
                                  ["task", "t1", "--since", "-5m"],
                                  ["events", "--since", "400d"],
                                  ["events", "--type", "a b\x1b"]])
def test_bad_arguments_exit_2_before_anything_is_read(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        main.main(argv)
    assert exited.value.code == 2
    assert "\x1b" not in capsys.readouterr().err


def test_durations_read_as_the_config_reads_them():
    args = main._parser().parse_args(["events", "--since", "90", "--type", "resize"])
    assert (args.since, args.type, args.follow, args.task) == (90.0, "resize", False, None)
    assert main._parser().parse_args(["task", "t1", "--since", "2h"]).since == 7200.0
