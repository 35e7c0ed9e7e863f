"""bulk: a file of tasks checked line by line, and the summary that says where to resume."""
import io
import json

import pytest

from taskqueue.cli import bulk
from taskqueue.cli.bulk import Outcome, parse_lines, read_tasks, summary
from taskqueue.client import onehop_message
from taskqueue.errors import InputError
from taskqueue.protocol.routing import Route, route


def lines(text):
    return io.BytesIO(text.encode() if isinstance(text, str) else text)


def test_each_line_becomes_the_body_a_single_submit_sends_and_blank_lines_are_skipped():
    tasks, problems = parse_lines(lines('{"a": 1}\n\n  \n"text"\r\n[1, 2]'), "recorder")
    assert problems == []
    assert [t.line for t in tasks] == [1, 4, 5]
    # One hop: the workitem itself, compact, as client.onehop_message makes it
    assert [t.body for t in tasks] == [onehop_message("recorder", item)[0]
                                       for item in ({"a": 1}, "text", [1, 2])]
    assert [t.body for t in tasks] == [b'{"a":1}', b'"text"', b'[1,2]']
    # and the dispatcher routes each by its worker_type header, unchanged
    assert all(route(t.body, "application/json", {"worker_type": "recorder"}) ==
               Route("recorder", t.body) for t in tasks)


def test_every_bad_line_is_named_with_its_number_and_what_is_wrong():
    text = b'1\n{not json\nNaN\n1e400\n\xff\n' + b"[" * 100000 + b"\n2\n"
    tasks, problems = parse_lines(lines(text), "t")
    assert [t.line for t in tasks] == [1, 7]
    assert [(n, what.split(" (")[0].split(":")[0]) for n, what in problems] == [
        (2, "not valid JSON"), (3, "not valid JSON"), (4, "not valid JSON"),
        (5, "not UTF-8 text"), (6, "not usable JSON")]
    assert "'{not json'" in problems[0][1]
    assert "NaN is not JSON" in problems[1][1]
    assert "number 1e400 is too large" in problems[2][1]


def test_a_byte_order_mark_on_the_first_line_is_not_an_error():
    tasks, problems = parse_lines(lines("\ufeff{}\n".encode()), "t")
    assert problems == [] and len(tasks) == 1


def test_read_tasks_refuses_the_whole_file_naming_file_and_line(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(f'{{"n": {n}}}\n' for n in range(20)) + "{bad\n" * 12)
    with pytest.raises(InputError) as error:
        read_tasks(str(path), "t")
    message = str(error.value)
    assert f"{path}:21: not valid JSON" in message
    assert f"{path}:30:" in message and f"{path}:31:" not in message   # the first 10 are named
    assert "... and 2 more bad lines" in message
    assert message.endswith("nothing was submitted (12 bad lines of 32 tasks)")


def test_read_tasks_says_which_file_it_cannot_read(tmp_path):
    with pytest.raises(InputError, match=f"cannot read {tmp_path}/nope: No such file"):
        read_tasks(f"{tmp_path}/nope", "t")


def test_summary_of_a_complete_run_is_one_line_with_the_rate():
    assert summary(Outcome(500, 500, 0.25, None, 0, None), "recorder", "t.jsonl") == [
        "submitted 500 of 500 tasks (recorder) to taskqueue.direct in 0.25 s (2,000/s)"]


def test_summary_of_a_broken_run_says_where_to_resume_and_what_would_be_sent_twice():
    out = summary(Outcome(500, 210, 1.0, 201, 10, "connection lost"), "recorder", "my tasks.jsonl")
    assert out[0].startswith("submitted 210 of 500 tasks")
    assert out[1] == ("every task before line 201 of my tasks.jsonl is confirmed; resume from "
                      "line 201: tail -n +201 'my tasks.jsonl' | taskqueue submit --file - recorder")
    assert "10 tasks after line 201 were confirmed too" in out[2]
    unsure = summary(Outcome(500, 200, 1.0, 201, 0, "connection lost", unconfirmed=7), "t", "f")
    assert unsure[2] == ("(7 tasks were sent without a confirm: some may be in worker_t or "
                         "taskqueue already, and resuming submits them again)")
    from_stdin = summary(Outcome(5, 0, 0.1, 1, 0, "no broker"), "t", "-")
    assert from_stdin[1] == ("no task of the input is confirmed; resume from line 1: "
                             "tail -n +1 FILE | taskqueue submit --file - t")


def test_outcome_rate_is_zero_before_any_time_passed():
    assert Outcome(0, 0, 0.0, None, 0, None).rate == 0.0
    assert bulk.PROBLEMS_SHOWN == 10
