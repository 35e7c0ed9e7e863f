"""The task events' wire format (protocol/events.py), task ids with a time
(protocol/taskids.py) and the [amqp] events options: pure."""
import json
import time
import uuid

import pytest
from hypothesis import given, settings, strategies as st

from taskqueue.host import config
from taskqueue.protocol import events, taskids

ORIGIN = {"host": "h1", "child": "recorder#0", "pid": 42}


def test_a_batch_reads_back_as_it_was_written_with_its_writer_in_each_event():
    batch = [events.event("started", "t1", "recorder", attempt=2, redelivered=True,
                          trace="ab" * 16),
             events.event("done", "t1", "recorder", duration=0.25),
             events.event("dead", "t2", None, reason="x" * 5000)]
    found, problems = events.decode(events.encode(ORIGIN, batch))
    assert problems == 0
    assert [e["event"] for e in found] == ["started", "done", "dead"]
    assert all(e["host"] == "h1" and e["child"] == "recorder#0" and e["pid"] == 42
               for e in found)
    assert found[0]["attempt"] == 2 and found[0]["redelivered"] is True
    assert found[1]["duration"] == 0.25 and "attempt" not in found[1]
    assert len(found[2]["reason"]) == events.MAX_REASON and "type" not in found[2]


def test_an_event_leaves_out_what_it_was_not_given_and_keeps_the_time_it_was_given():
    made = events.event("submitted", "t", "w", at=1000.12345, delay=None, trace=None)
    assert made == {"event": "submitted", "task": "t", "type": "w", "at": 1000.123}
    assert abs(events.event("done", "t", "w")["at"] - time.time()) < 5


@pytest.mark.parametrize("body", [
    b"", b"not json", b"[]", b'"text"', b'{"events": 3}', b"\xff\xfe", b"[" * 100000,
    json.dumps({"events": [1, "x", None, [], {"event": "done"}]}).encode(),
    b"x" * (events.MAX_MESSAGE + 1), "not bytes",
])
def test_what_is_not_a_batch_of_events_is_counted_never_raised(body):
    found, problems = events.decode(body)
    assert found == [] and problems >= 1


def test_values_of_the_wrong_type_are_dropped_and_unknown_keys_ignored():
    body = json.dumps({"host": ["h"], "child": "c\x1b[31m", "pid": -1, "events": [
        {"event": "done", "task": "t", "at": 5, "attempt": True, "duration": "1",
         "redelivered": 1, "type": 7, "evil": "x", "trace": {"a": 1}},
        {"event": "done", "task": "t", "at": float("nan")},
    ]}).encode()
    found, problems = events.decode(body)
    assert problems == 1    # the second has no usable time
    assert found == [{"child": "c\x1b[31m", "event": "done", "task": "t", "at": 5.0}]
    # (the escape is kept as text: what prints it passes it through printable.py)


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.sampled_from(
                        ["event", "task", "at", "events", "host", "pid", "attempt", "x"]),
                        inner, max_size=5), max_leaves=30))
def test_decode_takes_any_json_without_raising(value):
    found, problems = events.decode(json.dumps({"events": [value]}).encode())
    assert len(found) + problems == 1
    for one in found:
        assert isinstance(one["event"], str) and isinstance(one["at"], float)


def test_the_streams_arguments_carry_the_retention_and_size():
    assert events.stream_arguments(3600, 2**30) == {
        "x-queue-type": "stream", "x-max-age": "3600s", "x-max-length-bytes": 2**30,
        "x-stream-max-segment-size-bytes": events.SEGMENT_BYTES}
    assert events.stream_arguments(60, 2**20)["x-stream-max-segment-size-bytes"] == 2**20


def test_a_stream_declared_otherwise_is_kept_a_refusal_for_another_reason_is_not():
    assert events.kept_as_found("PRECONDITION_FAILED - inequivalent arg 'x-max-age' for queue")
    assert not events.kept_as_found("ACCESS_REFUSED - access to queue 'taskqueue_events'")


def test_task_ids_are_uuid7_hex_whose_time_reads_back():
    now = time.time()
    made = taskids.new_id(now)
    assert len(made) == 32 and uuid.UUID(made).version == 7
    assert uuid.UUID(made).variant == uuid.RFC_4122
    assert abs(taskids.issued_at(made) - now) < 0.002
    assert taskids.issued_at(str(uuid.UUID(made))) == taskids.issued_at(made)   # dashed too
    assert len({taskids.new_id(now) for _ in range(1000)}) == 1000
    assert taskids.new_id(now + 1) > made       # ordered by time


@pytest.mark.parametrize("other", [uuid.uuid4().hex, "m-1", "", None, 7, "7" * 32, "g" * 32,
                                   "0" * 12 + "7" + "0" * 19])
def test_an_id_made_otherwise_has_no_time(other):
    assert taskids.issued_at(other) is None


@pytest.mark.parametrize("text, seconds", [("7d", 7 * 86400), ("12h", 43200), ("90", 90),
                                           ("1.5h", 5400), ("15m", 900), (" 60 s ", 60)])
def test_a_retention_reads_with_its_unit(text, seconds):
    assert config.parse_retention(text) == seconds


@pytest.mark.parametrize("text", ["59", "0", "-1d", "7 days", "1y", "", "nan", "400d"])
def test_a_retention_out_of_range_or_unreadable_says_what_is_expected(text):
    with pytest.raises(ValueError, match=r"expected a duration from 1m to 366d: "):
        config.parse_retention(text)


def test_events_options_are_read_from_amqp(tmp_path):
    path = tmp_path / "c.ini"
    path.write_text("[amqp]\nevents: no\nevents_retention: 2d\nevents_max_bytes: 64 MiB\n")
    amqp = config.load(str(path), set(), check_users=False).amqp
    assert (amqp.events, amqp.events_retention, amqp.events_max_bytes) == (
        False, 2 * 86400, 64 * 2**20)
    path.write_text("[amqp]\nevents_max_bytes: 10\n")
    with pytest.raises(config.ConfigError, match=r"\[amqp\] events_max_bytes = '10': expected "
                                                 r"a size from 1 MiB"):
        config.load(str(path), set(), check_users=False)


@pytest.mark.parametrize("seconds, text", [(604800, "7d"), (7200, "2h"), (60, "1m"), (90, "90s"),
                                           (1.5, "1.5s")])
def test_a_span_is_said_in_its_largest_whole_unit(seconds, text):
    assert config.format_span(seconds) == text
