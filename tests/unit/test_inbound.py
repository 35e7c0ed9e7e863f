"""What taskqueue takes of a message as it comes in (inbound.py), and what a dead letter
of a refused one keeps (deadletters.py) and the tools make of it (dead.py)."""
import pika
import pytest

from taskqueue.broker import deadletters, inbound
from taskqueue.broker.fielddecode import UndecodedTable
from taskqueue.cli import dead
from taskqueue.errors import NotRequeueable

LIMIT = 1000


def props(**kwargs):
    return pika.BasicProperties(**kwargs)


def test_a_message_taskqueue_writes_is_taken():
    headers = {"worker_type": "echo", "x-taskqueue-retries": 3,
               "x-taskqueue-delayed-until": 1_900_000_000, "other": [1, {"a": None}]}
    assert inbound.refusal(props(headers=headers), b"x" * LIMIT, LIMIT) is None
    assert inbound.refusal(props(), b"", LIMIT) is None


def test_headers_not_decoded_are_refused_with_the_decoders_reason():
    undecoded = props(headers=UndecodedTable("nested deeper than 32 levels", b"raw"))
    assert inbound.refusal(undecoded, b"", LIMIT) == \
        "headers not decoded: nested deeper than 32 levels"


def test_a_body_over_the_limit_is_refused_saying_both_sizes():
    assert inbound.refusal(props(), b"x" * (LIMIT + 1), LIMIT) == \
        "body is 1001 bytes, more than [amqp] max_body_size (1000 bytes)"


@pytest.mark.parametrize("name, value", [
    ("x-taskqueue-retries", "3"), ("x-taskqueue-retries", -1), ("x-taskqueue-retries", 2**31),
    ("x-taskqueue-retries", True), ("x-taskqueue-retries", 1.5), ("x-taskqueue-retries", None),
    ("x-taskqueue-retries", [1]), ("x-taskqueue-delayed-until", "soon"),
    ("x-taskqueue-delayed-until", -5), ("x-taskqueue-delayed-until", b"\x00"),
    ("x-taskqueue-expires", "tomorrow"), ("x-taskqueue-expires", -1),
    ("x-taskqueue-expires", 1.7e12), ("x-taskqueue-expires", 2**64)])
def test_a_checked_header_that_is_not_what_taskqueue_writes_is_refused(name, value):
    reason = inbound.refusal(props(headers={name: value}), b"", LIMIT)
    assert reason.startswith(f"header {name} is {value!r}: expected ")
    assert "an integer from 0 to " in reason


def test_dead_letter_headers_from_a_publisher_are_dropped_and_the_priority_clamped():
    forged = {"x-taskqueue-reason": "r", "x-taskqueue-exit": "e", "x-taskqueue-queue": "q",
              "x-taskqueue-worker-type": "w", "x-taskqueue-raw-headers": b"",
              "x-taskqueue-retries": 1, "x-taskqueue-delayed-until": 5, "mine": 1, b"\xff": 2}
    out = inbound.admitted(props(headers=forged, priority=200, message_id="m"))
    assert out.headers == {"x-taskqueue-retries": 1, "x-taskqueue-delayed-until": 5, "mine": 1,
                           b"\xff": 2}
    assert out.priority == inbound.MAX_PRIORITY and out.message_id == "m"
    assert forged["x-taskqueue-reason"] == "r"    # a copy: the delivery's own untouched


def test_a_one_hop_task_with_a_dead_letter_header_is_refused_naming_it():
    # The worker's own check (the dispatcher drops them instead): the broker's copy
    # would keep a forged reason were the task dead-lettered later.
    reason = inbound.forged_dead_letter_header(props(headers={
        "mine": 1, "x-taskqueue-retries": 2, "x-taskqueue-exit": "\x1b[2J"}))
    assert reason == ("header 'x-taskqueue-exit' set by its publisher: only taskqueue's "
                      "dead letters carry it")
    # Named in sorted order, whatever order the broker delivered them in (RabbitMQ 4
    # writes a table's fields in its own order), at most three
    many = {f"x-taskqueue-{c}": 1 for c in "edcba"}
    assert inbound.forged_dead_letter_header(props(headers=many)) == (
        "headers 'x-taskqueue-a', 'x-taskqueue-b', 'x-taskqueue-c' and 2 more set by its "
        "publisher: only taskqueue's dead letters carry them")
    clean = {"mine": 1, "x-taskqueue-retries": 2, "x-taskqueue-delayed-until": 5, b"\xff": 2}
    assert inbound.forged_dead_letter_header(props(headers=clean)) is None
    assert inbound.forged_dead_letter_header(props()) is None


@pytest.mark.parametrize("priority", [None, 0, 5, 9])
def test_a_clean_message_is_admitted_as_it_is(priority):
    original = props(headers={"a": 1}, priority=priority)
    assert inbound.admitted(original) is original


def test_a_dead_letter_of_undecoded_headers_keeps_their_bytes_and_drops_forged_ones():
    raw = b"\x00\x00\x00\x05raw!!"
    out = deadletters.dead_properties(props(headers=UndecodedTable("too deep", raw),
                                           message_id="m"), "headers not decoded: too deep")
    assert out.headers[deadletters.RAW_HEADERS] == raw
    assert out.headers["x-taskqueue-reason"] == "headers not decoded: too deep"
    forged = deadletters.dead_properties(props(headers={"x-taskqueue-exit": "lie", "a": 1}), "why")
    assert "x-taskqueue-exit" not in forged.headers and forged.headers["a"] == 1


def test_a_dead_letter_keeps_at_most_max_raw_kept_bytes_and_says_so():
    raw = b"r" * (deadletters.MAX_RAW_KEPT + 10)
    out = deadletters.dead_properties(props(headers=UndecodedTable("too big", raw)), "why")
    assert out.headers[deadletters.RAW_HEADERS] == raw[:deadletters.MAX_RAW_KEPT]
    assert out.headers["x-taskqueue-reason"] == (
        f"why (the first {deadletters.MAX_RAW_KEPT} of their {len(raw)} bytes kept)")


def test_dead_tools_describe_and_keep_a_letter_whose_headers_were_not_decoded():
    body = b'{"worker_type": "echo", "workitem": 1}'
    undecoded = props(headers=UndecodedTable("unknown field kind 'Z'", b"raw"), message_id="m")
    letter = dead.describe(undecoded, body)
    assert letter.reason == "headers not decoded: unknown field kind 'Z'"
    assert letter.worker_type == "echo"
    ours = deadletters.dead_properties(undecoded, "headers not decoded: unknown field kind 'Z'")
    for letter in (undecoded, ours):
        with pytest.raises(NotRequeueable, match="its headers could not be decoded"):
            dead.requeue_copy(letter, body)


def test_dead_requeue_refuses_a_body_the_dispatcher_would_refuse_again():
    letter = deadletters.dead_properties(props(message_id="m"), "body is 20 bytes, more than ...")
    body = b'{"worker_type": "echo", "workitem": "0123456789"}'
    with pytest.raises(NotRequeueable, match="body is 49 bytes, more than"):
        dead.requeue_copy(letter, body, max_body_size=20)
    assert dead.requeue_copy(letter, body, max_body_size=100)[0] == body


def test_dead_requeue_takes_a_header_name_that_is_not_utf8():
    letter = deadletters.dead_properties(props(headers={b"\xff": 1}), "why")
    body = b'{"worker_type": "echo", "workitem": 1}'
    assert dead.requeue_copy(letter, body)[1].headers == {b"\xff": 1}
