"""Failure replies on real workers (docs/02 "Failure replies"): a task that ends without
the plugin's reply answers its caller at once, with why; a retried one only after its
last attempt. Client.call raises TaskFailed, `submit --wait` exits 5."""
import json
import subprocess
import time

import pytest

from support import TASKQUEUE, recorder_config, serving, wait_for
from taskqueue.client import TaskFailed

FAILED = "x-taskqueue-failed"



def starts(records, task_id):
    return sorted((r for r in records.all("start") if r["id"] == task_id),
                  key=lambda r: r["retries"])


@pytest.mark.timeout(60)
def test_a_raising_tasks_call_raises_task_failed_naming_the_exception_within_1_s(
        broker, start_pool, records, client):
    serving(broker, start_pool, recorder_config(records), "worker_recorder")
    with pytest.raises(TaskFailed) as failed:
        client.call("recorder", {"id": "boom", "raise": True}, timeout=30)
    answered = time.time()
    [start] = starts(records, "boom")
    assert answered - start["time"] < 1.0
    assert failed.value.reason == "raised RuntimeError: task boom asked to fail"
    assert len(failed.value.task_id) == 32
    assert str(failed.value) == (f"recorder task {failed.value.task_id} failed: raised "
                                 f"RuntimeError: task boom asked to fail")
    # and the task is dead-lettered as before; the connection serves the next call
    wait_for(lambda: broker.counts("taskqueue_dead")[0] == 1, 10, "the dead letter")
    reply = json.loads(client.call("recorder", {"id": "fine", "reply": 1}, timeout=10))
    assert reply["reply"] == 1


@pytest.mark.timeout(60)
def test_a_task_rejected_by_its_plugin_or_refused_by_the_worker_answers_with_why(
        broker, start_pool, records, client):
    serving(broker, start_pool, recorder_config(records), "worker_recorder")
    with pytest.raises(TaskFailed, match=r"rejected by the plugin \(basic_reject without "
                                         r"requeue\)$"):
        client.call("recorder", {"id": "no", "reject": True}, timeout=30)
    # Refused before the plugin sees it (a forged dead-letter header), to a server-named queue
    own = broker.channel.queue_declare("", exclusive=True).method.queue
    broker.submit_one_hop("recorder", {"id": "forged"}, reply_to=own, correlation_id="c-forged",
                          headers={"x-taskqueue-reason": "forged"})
    [(props, body)] = wait_for(lambda: broker.drain(own), 15, "the failure reply")
    assert props.correlation_id == "c-forged"
    assert props.headers[FAILED].startswith("refused: ") and "x-taskqueue-reason" in body.decode()
    assert props.content_type == "text/plain; charset=utf-8"
    assert body.decode() == props.headers[FAILED]
    assert "forged" not in records.ids("start")


@pytest.mark.timeout(60)
def test_through_the_dispatcher_a_raising_task_answers_its_reply_to_within_1_s(
        broker, start_pool, records):
    serving(broker, start_pool, recorder_config(records), "worker_recorder")
    own = broker.channel.queue_declare("", exclusive=True).method.queue
    broker.submit("recorder", {"id": "hop2", "raise": True}, message_id="m-hop2",
                  correlation_id="c-hop2", reply_to=own)
    [(props, body)] = wait_for(lambda: broker.drain(own), 15, "the failure reply", interval=0.01)
    answered = time.time()
    assert answered - starts(records, "hop2")[0]["time"] < 1.0
    assert (props.correlation_id, props.headers[FAILED]) == (
        "c-hop2", "raised RuntimeError: task hop2 asked to fail")


@pytest.mark.timeout(90)
def test_a_retried_task_answers_only_after_its_last_attempt(broker, start_pool, records, client):
    serving(broker, start_pool, recorder_config(records, extra="max_retries: 1\nretry_delay: 1\n"),
            "worker_recorder")
    # Failing once, then replying: the caller gets the reply, no failure from the first attempt
    reply = json.loads(client.call("recorder", {"id": "once", "fail_times": 1, "reply": "ok"},
                                   timeout=30))
    assert reply["reply"] == "ok" and len(starts(records, "once")) == 2
    # Failing every time: TaskFailed once the retry failed too, at once
    with pytest.raises(TaskFailed) as failed:
        client.call("recorder", {"id": "always", "fail_times": 99}, timeout=30)
    answered = time.time()
    first, last = starts(records, "always")
    assert last["time"] - first["time"] >= 1.0       # retry_delay: the first attempt was silent
    assert answered - last["time"] < 1.0
    assert failed.value.reason == (
        "raised RuntimeError: task always fails attempt 1 after 1 retries")


@pytest.mark.timeout(60)
def test_submit_wait_prints_the_reason_and_exits_5(broker, start_pool, records):
    pool = serving(broker, start_pool, recorder_config(records), "worker_recorder")
    out = subprocess.run([TASKQUEUE, "submit", "--config", pool.config_path, "--wait",
                          "--timeout", "30", "recorder", '{"id": "cli", "raise": true}'],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 5, out.stderr
    assert out.stdout == ""
    assert out.stderr.startswith("taskqueue: recorder task ")
    assert out.stderr.rstrip().endswith("failed: raised RuntimeError: task cli asked to fail")
    assert pool.stop() == 0
