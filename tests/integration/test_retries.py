"""Retrying later: channel.retry(), and handle_task raising with max_retries left.

A retried task goes through the delay queues and comes back to its worker as a
new message counting its retries (x-taskqueue-retries); the gaps are measured
between the plugin's own start records.
"""
import decimal
import re

from support import recorder_config, wait_for


def starts(records, task_id):
    """The task's start records, in the order of its attempts."""
    attempts = [r for r in records.all("start") if r["id"] == task_id]
    return sorted(attempts, key=lambda r: r["retries"])


def test_a_task_that_raises_twice_completes_on_its_third_attempt_after_growing_gaps(
        broker, start_pool, records):
    pool = start_pool(recorder_config(records, extra="max_retries: 3\nretry_delay: 1\n"))
    broker.submit("recorder", {"id": "flaky", "fail_times": 2}, message_id="m-flaky")
    wait_for(lambda: records.ids() == ["flaky"], 30, "the flaky task done")
    first, second, third = starts(records, "flaky")
    assert [first["retries"], second["retries"], third["retries"]] == [0, 1, 2]
    assert second["time"] - first["time"] >= 1.0      # retry_delay
    assert third["time"] - second["time"] >= 2.0      # x retry_backoff 2
    assert broker.counts("taskqueue_dead")[0] == 0
    pool.wait_log(r"task m-flaky: retry 2 in 2\.\ds")
    assert pool.stop() == 0


def test_a_task_that_keeps_raising_is_dead_lettered_once_its_retries_are_spent(
        broker, start_pool, records):
    pool = start_pool(recorder_config(records, extra="max_retries: 1\nretry_delay: 1\n"))
    broker.submit("recorder", {"id": "broken", "fail_times": 99}, message_id="m-broken")
    dead = wait_for(lambda: broker.drain("taskqueue_dead"), 30, "the task dead-lettered")
    props, _ = dead[0]
    assert props.message_id == "m-broken"
    assert props.headers["x-taskqueue-reason"] == (
        "raised RuntimeError: task broken fails attempt 1 after 1 retries")
    assert props.headers["x-taskqueue-retries"] == 1
    assert len(starts(records, "broken")) == 2
    assert pool.stop() == 0


def test_channel_retry_brings_the_task_back_after_the_delay_it_asked_for(
        broker, start_pool, records):
    pool = start_pool(recorder_config(records, extra="max_retries: 5\n"))
    broker.submit("recorder", {"id": "later", "retry": 2, "retry_times": 1})
    wait_for(lambda: records.ids() == ["later"], 30, "the task done after its retry")
    first, second = starts(records, "later")
    assert 2.0 <= second["time"] - first["time"] < 4.0
    assert pool.stop() == 0


def test_a_plugin_that_always_asks_to_retry_ends_dead_lettered_not_in_a_hot_loop(
        broker, start_pool, records):
    # max_retries 0: retry() is bounded by the documented cap (retries.EXPLICIT_RETRY_CAP, 20)
    pool = start_pool(recorder_config(records))
    broker.submit("recorder", {"id": "again", "retry": 0}, message_id="m-again")
    dead = wait_for(lambda: broker.drain("taskqueue_dead"), 60, "the task dead-lettered")
    assert dead[0][0].headers["x-taskqueue-reason"] == (
        "retry() asked after 20 retries: the cap of 20 retries without max_retries reached")
    assert len(starts(records, "again")) == 21
    assert pool.stop() == 0


def test_forged_retry_counts_end_in_taskqueue_dead_with_their_reason_and_never_stop_the_worker(
        broker, start_pool, records):
    # Given a steep backoff and many retries allowed (retry_backoff 3: 3.0 ** 700 overflows)
    pool = start_pool(recorder_config(
        records, extra="max_retries: 1000\nretry_delay: 1\nretry_backoff: 3\n"))
    pool.wait_log(r"recorder#0 .*STARTING -> RUNNING")
    child = pool.children()
    # When tasks come with x-taskqueue-retries forged: a count deep into the backoff, and
    # values that are no count (through the dispatcher and one hop alike)
    forged = {"deep": 700, "many": 2**31 - 1, "huge": 2**62, "negative": -5, "text": "3",
              "decimal": decimal.Decimal("1.5"), "table": {"a": {"b": [1, 2]}}, "array": [1],
              "boolean": True, "escape": "\x1b[2J\r"}
    for name, value in forged.items():
        broker.submit("recorder", {"id": name, "raise": True}, message_id=f"m-{name}",
                      headers={"x-taskqueue-retries": value})
    broker.submit_one_hop("recorder", {"id": "onehop", "raise": True}, message_id="m-onehop",
                          headers={"x-taskqueue-retries": "x"})
    # Then the deep one is retried after retry_max_delay (it waits in the delay queues)
    pool.wait_log(r"task m-deep: retry 701 in 3600\.0s")
    # and each of the others is dead-lettered once, its reason naming what it held
    dead = {}

    def all_dead():
        dead.update({props.message_id: props for props, _ in broker.drain("taskqueue_dead")})
        return len(dead) >= len(forged)
    wait_for(all_dead, 30, lambda: f"the forged tasks dead-lettered (have {sorted(dead)})")
    reasons = {key: props.headers["x-taskqueue-reason"] for key, props in dead.items()}
    assert sorted(reasons) == sorted([f"m-{name}" for name in forged if name != "deep"]
                                     + ["m-onehop"])
    assert reasons["m-many"] == (
        "raised RuntimeError: task many asked to fail after 2147483647 retries")
    # (the worker's intake refuses a value that is no count before the plugin runs,
    # inbound.py; a retry would refuse it too, retries.read_count)
    for key in ("m-huge", "m-negative", "m-text", "m-decimal", "m-table", "m-array", "m-boolean",
                "m-escape", "m-onehop"):
        assert "x-taskqueue-retries" in reasons[key] and "2147483647" in reasons[key], reasons[key]
        assert reasons[key].isprintable(), reasons[key]
    # and the worker never stopped: the same process took every task
    assert pool.children() == child
    assert not re.search(r"recorder#0 pid=\d+ RUNNING -> ", pool.log()), pool.log()[-3000:]
    assert pool.stop() == 0
