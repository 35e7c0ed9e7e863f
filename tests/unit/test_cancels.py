"""Cancels, the pure parts: the records and their bounds (protocol/cancels.py), what is
pending, the ids a worker keeps, what `taskqueue cancel` says of each id (cli/cancel.py)
and status's line."""
import json

import pytest

from taskqueue.broker import cancelstream
from taskqueue.cli import cancel, status
from taskqueue.errors import InputError
from taskqueue.protocol import cancels


@pytest.mark.parametrize("task_id", ["0190a1b2c3d47000800000000000beef", "m-1", "x" * 200,
                                     "sha1-" + "a" * 40, "é-unicode-ok"])
def test_an_id_that_names_a_task_passes(task_id):
    assert cancels.id_problem(task_id) is None
    assert cancels.checked_id(task_id) == task_id


@pytest.mark.parametrize("task_id, words", [
    ("", "1 to 200 characters, not 0"),
    ("x" * 201, "1 to 200 characters, not 201"),
    ("a b", "without spaces"),
    ("tab\there", "without spaces"),
    ("\x1b[2J", "printable"),
    ("nul\x00", "printable"),
    ("line\nbreak", "printable"),
    (b"bytes", "a string, not bytes"),
    (42, "a string, not int"),
    (None, "a string, not NoneType"),
])
def test_an_id_that_names_no_task_is_refused_saying_why(task_id, words):
    assert words in cancels.id_problem(task_id)
    with pytest.raises(ValueError, match="task id"):
        cancels.checked_id(task_id)


def test_a_record_decodes_to_its_kind_id_and_time():
    body = cancels.record(cancels.CANCEL, "m-1", "tester", at=1000.5)
    assert cancels.decode(body) == ("cancel", "m-1", 1000.5)
    raw = json.loads(cancels.record(cancels.SETTLED, "m-1", "w#0", outcome="cancelled"))
    assert raw["settled"] == "m-1" and raw["outcome"] == "cancelled" and raw["by"] == "w#0"


def test_a_record_of_a_bad_id_is_never_written():
    with pytest.raises(ValueError):
        cancels.record(cancels.CANCEL, "a b", "tester")


@pytest.mark.parametrize("body", [
    b"", b"\xff\xfe", b"not json", b"[1]", b"null", b'"m-1"', b"{}",
    b'{"cancel": "a b"}', b'{"cancel": 5}', b'{"cancel": ["m-1"]}',
    b'{"cancel": "m-1", "settled": "m-1"}', b'{"revoke": "m-1"}',
    json.dumps({"cancel": "x" * 201}).encode(),
    json.dumps({"cancel": "m-1", "pad": "x" * cancels.MAX_RECORD}).encode(),
    b"[" * 100000, "not bytes",
])
def test_junk_decodes_to_none(body):
    assert cancels.decode(body) is None


@pytest.mark.parametrize("at", ["soon", None, float("inf"), True, [1]])
def test_a_record_with_a_bad_time_keeps_its_id(at):
    body = json.dumps({"cancel": "m-1", "at": at}).encode() if at != float("inf") \
        else b'{"cancel": "m-1", "at": 1e999}'
    assert cancels.decode(body) == ("cancel", "m-1", None)


def test_pending_is_the_cancels_no_worker_settled_oldest_first():
    records = [("cancel", "a", 1), ("cancel", "b", 2), ("settled", "a", 3),
               ("cancel", "c", 4), ("cancel", "b", 5), ("settled", "d", 6),
               ("cancel", "d", 7)]
    assert cancels.pending(records) == ["b", "c"]
    assert cancels.pending([]) == []


def test_the_worker_keeps_at_most_its_limit_of_ids_forgetting_the_oldest():
    ids = cancels.CancelledIds(limit=3)
    assert [ids.add(i) for i in "abca"] == [True, True, True, False]
    ids.add("d")
    assert "a" not in ids and {"b", "c", "d"} == {i for i in "abcd" if i in ids}
    assert len(ids) == 3 and ids.forgotten == 1


def test_the_stream_keeps_cancels_longer_than_the_longest_delay():
    from taskqueue.protocol import delays
    args = cancels.stream_arguments()
    assert cancels.RETENTION > delays.MAX_DELAY
    assert args["x-queue-type"] == "stream" and args["x-max-age"] == f"{13 * 86400}s"
    assert args["x-stream-max-segment-size-bytes"] <= args["x-max-length-bytes"]
    # The stream's name is no queue a reply may go to.
    from taskqueue.protocol import replies
    assert replies.is_own(cancels.STREAM)


def event(kind, at, host="h1"):
    return {"event": kind, "task": "t", "at": at, "host": host}


def test_the_command_cancels_a_task_not_finished_and_says_its_last_event():
    go, text = cancel.verdict("t", [event("submitted", 1), event("started", 2, "h2")], "then")
    assert go and text == "t: cancelling (last: started on h2)"


@pytest.mark.parametrize("final", ["done", "failed", "dead", "expired", "cancelled"])
def test_the_command_leaves_a_finished_task_and_says_how_it_ended(final):
    go, text = cancel.verdict("t", [event("started", 1), event(final, 2, "h3")], "then")
    assert not go and text == f"t: finished ({final} on h3): not cancelled"


def test_the_command_cancels_an_unknown_task_all_the_same_and_says_so():
    go, text = cancel.verdict("t", [], "12:00, its id's time")
    assert go and "unknown (no event since 12:00, its id's time)" in text
    go, text = cancel.verdict("t", [], None)
    assert go and "unknown (no events stream)" in text


def test_the_command_shows_hostile_event_text_escaped():
    go, text = cancel.verdict("t\x1b", [event("started", 1, host="\x1b[31mevil")], "then")
    assert "\x1b" not in text


def test_the_command_refuses_a_bad_id_naming_its_position_before_anything_is_sent():
    assert cancel.checked_ids(["a", "b", "a"]) == ["a", "b"]
    with pytest.raises(InputError, match=r"task id 2 \('a b'\): expected printable"):
        cancel.checked_ids(["ok", "a b"])
    with pytest.raises(InputError, match="at most"):
        cancel.checked_ids(["x"] * (cancel.MAX_IDS + 1))


def test_status_says_the_cancels_pending_and_the_junk():
    found = {"pending": 2, "records": 5, "junk": 1, "error": None}
    (line,) = status._cancel_lines(found)
    assert line.startswith("cancels pending: 2 (") and "1 message(s) that were no record" in line
    (line,) = status._cancel_lines({"pending": None, "records": None, "junk": None,
                                    "error": "connection lost"})
    assert line == "cancels pending: unknown (connection lost)"
    assert status._cancel_lines(None) == []


def test_a_stream_not_yet_read_is_tried_again_soon_then_backing_off_to_reopen():
    # A stream declared a moment ago refuses consumers for milliseconds; the first
    # task waits for it: the first retries come fast, then no faster than REOPEN.
    pauses = [cancelstream.retry_pause(n, caught_up=False) for n in range(1, 12)]
    assert pauses[0] <= 0.1
    assert pauses == sorted(pauses) and pauses[-1] == cancelstream.REOPEN
    assert sum(pauses[:5]) < 2


def test_a_stream_once_read_is_tried_again_every_reopen_seconds():
    assert {cancelstream.retry_pause(n, caught_up=True) for n in (1, 2, 50)} == \
        {cancelstream.REOPEN}
