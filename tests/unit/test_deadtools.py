"""deadtools: what a dead letter says about itself, and the copy a requeue publishes."""
import datetime
import hashlib
import json

import pika
import pytest

from taskqueue.cli.dead import NotRequeueable, as_json, describe, fresh_headers, requeue_copy, table
from taskqueue.protocol.routing import Route, route

NOW = 1_700_000_000.0


def props(**kwargs):
    return pika.BasicProperties(**kwargs)


def rejected_by_worker(time=datetime.datetime(2023, 11, 14, 22, 13, 0)):
    """As the broker dead-letters a task whose handle_task raised (pika 1.2 decodes naive UTC)."""
    return props(message_id="m-1", correlation_id="c-1", reply_to="r", content_type="application/json",
                 delivery_mode=2, headers={
                     "x-death": [{"count": 1, "reason": "rejected", "queue": "worker_recorder",
                                  "time": time, "exchange": "", "routing-keys": ["worker_recorder"]}],
                     "x-first-death-reason": "rejected", "x-first-death-queue": "worker_recorder",
                     "x-first-death-exchange": "", "x-delivery-count": 3, "trace": "keep me"})


def killed_its_workers():
    """As a worker dead-letters a task that killed `delivery_limit` processes."""
    return props(message_id="m-2", headers={
        "x-taskqueue-reason": "delivery limit 5 reached: 5 processes died handling it",
        "x-taskqueue-queue": "worker_crasher", "x-taskqueue-worker-type": "crasher",
        "x-taskqueue-dead-at": int(NOW) - 90, "x-taskqueue-exit": "crasher#0 pid 7: exit 9",
        "x-taskqueue-deaths": 5})


def test_describe_reads_the_brokers_x_death_for_a_task_a_worker_rejected():
    letter = describe(rejected_by_worker(), b'{"id": 1}')
    assert (letter.id, letter.reason, letter.queue, letter.worker_type) == (
        "m-1", "rejected", "worker_recorder", "recorder")
    assert letter.dead_at == datetime.datetime(2023, 11, 14, 22, 13, tzinfo=datetime.timezone.utc
                                               ).timestamp()
    assert letter.delivery_count == 3


def test_describe_takes_naive_and_aware_broker_timestamps_as_utc():
    aware = datetime.datetime(2023, 11, 14, 22, 13, tzinfo=datetime.timezone.utc)  # pika >= 1.3
    naive = aware.replace(tzinfo=None)                                             # pika 1.2
    assert describe(rejected_by_worker(aware), b"1").dead_at == \
        describe(rejected_by_worker(naive), b"1").dead_at == aware.timestamp()


def test_describe_prefers_taskqueues_own_headers_and_gives_the_age():
    letter = describe(killed_its_workers(), b'{"id": 2}')
    assert (letter.reason, letter.queue, letter.worker_type, letter.exit) == (
        "delivery limit 5 reached: 5 processes died handling it", "worker_crasher", "crasher",
        "crasher#0 pid 7: exit 9")
    assert letter.age(NOW) == 90


def test_describe_finds_the_type_in_the_envelope_of_a_message_the_dispatcher_refused():
    letter = describe(props(headers={"x-taskqueue-reason": "queue 'worker_x' already exists",
                                     "x-taskqueue-queue": "taskqueue"}),
                      b'{"worker_type": "x", "workitem": 1}')
    assert (letter.worker_type, letter.queue) == ("x", "taskqueue")
    assert letter.id.startswith("sha1-")    # no message id: a digest of the body


def test_describe_copes_with_a_message_that_says_nothing():
    letter = describe(props(), b"\xff binary")
    assert (letter.reason, letter.queue, letter.worker_type, letter.dead_at) == (
        "unknown: no x-taskqueue-reason or x-death header", None, None, None)
    assert letter.age(NOW) is None


def test_describe_uses_a_worker_type_header_when_nothing_else_tells():
    letter = describe(props(headers={"worker_type": b"bin"}), b"\x00")
    assert letter.worker_type == "bin"


def test_fresh_headers_drop_the_past_of_a_dead_letter_and_keep_the_clients_own():
    headers = dict(rejected_by_worker().headers, **killed_its_workers().headers,
                   **{"x-last-death-reason": "rejected", "x-acquired-count": 1, "x-custom": 1})
    assert fresh_headers(headers) == {"trace": "keep me", "x-custom": 1}


def test_a_workitem_dead_in_a_worker_queue_goes_back_with_a_worker_type_header():
    body, out = requeue_copy(rejected_by_worker(), b'{"id": 1}')
    assert body == b'{"id": 1}'
    assert out.headers == {"trace": "keep me", "worker_type": "recorder"}
    assert (out.message_id, out.correlation_id, out.reply_to, out.content_type, out.delivery_mode) \
        == ("m-1", "c-1", "r", "application/json", 2)
    assert route(body, out.content_type, out.headers) == Route("recorder", body)


def test_a_workitem_dead_in_a_high_queue_goes_back_with_its_type_and_its_priority():
    dead = rejected_by_worker()
    dead.priority = 9
    for name in ("x-first-death-queue",):
        dead.headers[name] = "worker_recorder+high"
    dead.headers["x-death"][0]["queue"] = "worker_recorder+high"
    letter = describe(dead, b'{"id": 1}')
    assert (letter.queue, letter.worker_type) == ("worker_recorder+high", "recorder")
    body, out = requeue_copy(dead, b'{"id": 1}')
    assert out.headers == {"trace": "keep me", "worker_type": "recorder"} and out.priority == 9
    assert route(body, out.content_type, out.headers) == Route("recorder", body)


def test_a_requeued_dead_letter_starts_its_retries_afresh():
    dead = rejected_by_worker()
    dead.headers.update({"x-taskqueue-retries": 3, "x-taskqueue-reason": "raised E after 3 retries",
                         "x-taskqueue-queue": "worker_recorder"})
    _, out = requeue_copy(dead, b'{"id": 1}')
    assert "x-taskqueue-retries" not in out.headers


def test_a_workitem_that_looks_like_an_envelope_still_goes_to_the_queue_it_died_in():
    workitem = b'{"worker_type": "other", "workitem": 1}'
    body, out = requeue_copy(killed_its_workers(), workitem)
    assert route(body, out.content_type, out.headers) == Route("crasher", workitem)


def test_an_envelope_dead_in_taskqueue_goes_back_as_it_is():
    envelope = b'{"worker_type": "recorder", "workitem": {"id": 3}}'
    dead = props(message_id="m-3", content_type="application/json", headers={
        "x-death": [{"reason": "expired", "queue": "taskqueue", "count": 1}]})
    body, out = requeue_copy(dead, envelope)
    assert body == envelope and out.headers is None
    assert route(body, out.content_type, out.headers) == Route("recorder", b'{"id":3}', "application/json")


def test_a_dead_letter_the_dispatcher_would_refuse_again_is_not_requeued():
    dead = props(message_id="m-4", headers={"x-taskqueue-reason": "body is not JSON",
                                            "x-taskqueue-queue": "taskqueue"})
    with pytest.raises(NotRequeueable, match="would dead-letter it again: body is not JSON"):
        requeue_copy(dead, b"{oops")


def test_the_original_is_left_untouched_by_a_requeue_copy():
    original = rejected_by_worker()
    before = dict(original.headers)
    requeue_copy(original, b"1")
    assert original.headers == before


def test_table_has_one_row_per_dead_letter_and_fits_a_terminal():
    letters = [describe(killed_its_workers(), b"1"),
               describe(props(message_id="m-x", headers={
                   "x-taskqueue-reason": "line one\nline two", "x-taskqueue-queue": "taskqueue"}),
                   b"2")]
    lines = table(letters, NOW)
    assert lines[0].split() == ["ID", "TYPE", "AGE", "QUEUE", "REASON"]
    assert lines[1].split()[:4] == ["m-2", "crasher", "1m30s", "worker_crasher"]
    assert lines[2].split() == ["m-x", "-", "-", "taskqueue", "line", "one", "line", "two"]
    assert all(len(line) <= 40 for line in table(letters, NOW, width=40))
    assert table(letters, NOW, width=40)[1].endswith("...")


def test_as_json_gives_scripts_every_fact_and_the_body():
    out = as_json(describe(killed_its_workers(), b'{"id": 2}'), NOW)
    assert out == {"id": "m-2", "message_id": "m-2", "type": "crasher",
                   "reason": "delivery limit 5 reached: 5 processes died handling it",
                   "queue": "worker_crasher", "dead_at": NOW - 90, "age": 90.0,
                   "exit": "crasher#0 pid 7: exit 9", "delivery_count": None, "body": '{"id": 2}'}
    json.dumps(out)
    binary = as_json(describe(props(), b"\xff\x00"), NOW)
    assert binary["body"] is None and binary["body_base64"] == "/wA="


def test_a_letter_described_without_keeping_its_body_has_the_id_and_type_of_its_real_body():
    # What `dead list` shows in its table: the same id `--json` and `requeue --id` use.
    envelope = b'{"worker_type": "recorder", "workitem": 1}'
    refused = props(headers={"x-taskqueue-reason": "refused", "x-taskqueue-queue": "taskqueue"})
    kept, dropped = describe(refused, envelope), describe(refused, envelope, keep_body=False)
    assert dropped.id == kept.id == "sha1-" + hashlib.sha1(envelope).hexdigest()
    assert dropped.worker_type == kept.worker_type == "recorder"
    assert (kept.body, dropped.body) == (envelope, None)
    assert table([dropped], NOW)[1].split()[:2] == [kept.id, "recorder"]
