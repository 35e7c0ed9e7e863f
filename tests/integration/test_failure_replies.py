"""Failure replies on real workers and the real dispatcher (docs/02 "Failure replies"): a
task that ends without the plugin's reply answers its caller at once, with why (raised,
rejected, refused, the delivery limit, not routed); a retried one only after its last
attempt. Client.call raises TaskFailed, `submit --wait` exits 5."""
import datetime
import functools
import json
import re
import subprocess
import time

import pytest

from support import BROKER_HOST, TASKQUEUE, recorder_config, serving, wait_for
from taskqueue.client import Client, TaskFailed
from taskqueue.host.config import AmqpSettings

FAILED = "x-taskqueue-failed"
#: Seconds within which a failure is answered, from the moment it happened (issue 22).
PROMPT = 1.0
#: Seconds from a task's last death (delivery_limit) to its answer: a new process must
#: start first, after the restart's backoff (at most 0.2 s here), and take the task.
DEATH_PROMPT = 2.0

def starts(records, task_id):
    return sorted((r for r in records.all("start") if r["id"] == task_id),
                  key=lambda r: (r["retries"], r["time"]))


def own_queue(broker):
    """A server-named queue of the test's (amq.gen-...): a reply queue."""
    return broker.channel.queue_declare("", exclusive=True).method.queue


def logged_times(pool, pattern):
    """The times (epoch seconds) of the pool's log lines matching `pattern`, read from
    their timestamps (local time, milliseconds)."""
    return [datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
            for stamp in re.findall(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*" + pattern,
                                    pool.log(), re.MULTILINE)]


@pytest.mark.timeout(60)
def test_a_raising_tasks_call_raises_task_failed_naming_the_exception_within_1_s(
        broker, start_pool, records, client):
    serving(broker, start_pool, recorder_config(records), "worker_recorder")
    with pytest.raises(TaskFailed) as failed:
        client.call("recorder", {"id": "boom", "raise": True}, timeout=30)
    answered = time.time()
    [start] = starts(records, "boom")
    assert answered - start["time"] < PROMPT
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
    assert answered - starts(records, "hop2")[0]["time"] < PROMPT
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
    assert answered - last["time"] < PROMPT
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


@pytest.mark.timeout(90)
def test_through_the_dispatcher_a_retried_task_answers_only_after_its_last_attempt(
        broker, start_pool, records):
    serving(broker, start_pool, recorder_config(records, extra="max_retries: 2\nretry_delay: 1\n"),
            "worker_recorder")
    own = own_queue(broker)
    broker.submit("recorder", {"id": "chain", "fail_times": 99}, correlation_id="c-chain",
                  reply_to=own)
    # The first attempt was silent: nothing had come when the second started, a second
    # after it (retry_delay)
    wait_for(lambda: len(starts(records, "chain")) >= 2, 30, "the second attempt")
    assert broker.drain(own) == [], "a failure reply before the last attempt"
    # and so was the second: the one reply there is, is the last attempt's (a reply of the
    # second would have come a second before it)
    [(props, body)] = wait_for(lambda: broker.drain(own), 15, "the failure reply", interval=0.01)
    answered = time.time()
    last = starts(records, "chain")[-1]
    assert last["retries"] == 2 and answered - last["time"] < PROMPT
    assert (props.correlation_id, body.decode()) == (
        "c-chain", "raised RuntimeError: task chain fails attempt 2 after 2 retries")
    assert broker.drain(own) == []      # one reply, once


@pytest.mark.timeout(120)
def test_a_task_that_kills_its_process_delivery_limit_times_fails_its_call_promptly(
        broker, start_pool, records, vhost, amqp_port):
    # A plugin that os._exit()s: the supervisor records each death, the replacement
    # dead-letters the task at the limit and answers with the limit and the last cause
    broker.settings = AmqpSettings(delivery_limit=3)
    pool = serving(broker, functools.partial(start_pool, amqp_extra="delivery_limit: 3\n"),
                   recorder_config(records), "worker_recorder")
    with Client(host=BROKER_HOST, port=amqp_port, vhost=vhost, delivery_limit=3) as client, \
            pytest.raises(TaskFailed) as failed:
        client.call("recorder", {"id": "poison", "exit": 9}, timeout=60)
    answered = time.time()
    task_id = failed.value.task_id
    assert re.fullmatch(r"delivery limit 3 reached: 3 processes died handling it; last: "
                        rf"recorder#0 pid \d+: exit 9 during task {task_id}",
                        failed.value.reason), failed.value.reason
    assert len(starts(records, "poison")) == 3
    deaths = logged_times(pool, r"recorder#0 pid=\d+ exit 9")
    assert len(deaths) == 3
    # The last death to the answer: the restart's backoff (0.2 s after the third death in a
    # row), a new process's start, its first delivery (0.24-0.27 s measured, unloaded)
    delay = answered - deaths[-1]
    print(f"delivery limit (exit 9): answered {delay:.3f}s after the last death")
    assert 0 <= delay < DEATH_PROMPT
    [(props, _)] = wait_for(lambda: broker.drain("taskqueue_dead"), 10, "the dead letter")
    assert props.headers["x-taskqueue-reason"] == failed.value.reason


@pytest.mark.timeout(120)
def test_a_task_killed_at_its_task_timeout_delivery_limit_times_answers_through_the_dispatcher(
        broker, start_pool, records):
    broker.settings = AmqpSettings(delivery_limit=2)
    pool = serving(broker, functools.partial(start_pool, amqp_extra="delivery_limit: 2\n"),
                   recorder_config(records, extra="task_timeout: 1\n"), "worker_recorder")
    own = own_queue(broker)
    broker.submit("recorder", {"id": "hang", "sleep": 60}, message_id="m-hang",
                  correlation_id="c-hang", reply_to=own)
    [(props, body)] = wait_for(lambda: broker.drain(own), 60, "the failure reply", interval=0.01)
    answered = time.time()
    kills = logged_times(pool, r"recorder#0 pid=\d+ killed by SIGKILL \(task_timeout\)")
    assert len(kills) == 2
    delay = answered - kills[-1]
    print(f"delivery limit (task_timeout): answered {delay:.3f}s after the last kill")
    assert 0 <= delay < DEATH_PROMPT     # 0.15 s measured, unloaded
    assert props.correlation_id == "c-hang"
    assert re.fullmatch(r"delivery limit 2 reached: 2 processes died handling it; last: "
                        r"recorder#0 pid \d+: killed by SIGKILL \(task_timeout\) during task "
                        r"m-hang", body.decode()), body
    assert props.headers[FAILED] == body.decode()


@pytest.mark.timeout(60)
def test_what_the_dispatcher_dead_letters_answers_within_1_s_and_routing_goes_on(
        broker, start_pool, records):
    serving(broker, start_pool, recorder_config(records), "worker_recorder")
    own = own_queue(broker)
    # Not routable (plain text with no space), and refused (a retry count that is no number)
    sent = time.time()
    broker.publish_raw(b"nospace", reply_to=own, correlation_id="c-plain")
    broker.submit("recorder", {"id": "bad-count"}, reply_to=own, correlation_id="c-count",
                  headers={"x-taskqueue-retries": "many"})
    # and not one of the reply queues: dead-lettered, never answered
    broker.publish_raw(b"neither", reply_to="taskqueue", correlation_id="c-own")
    got = wait_for(lambda: broker.drain(own), 15, "the failure replies", interval=0.01)
    if len(got) < 2:
        got += wait_for(lambda: broker.drain(own), 15, "the second reply", interval=0.01)
    answered = time.time()
    assert answered - sent < PROMPT
    replies = {props.correlation_id: (props.headers[FAILED], body.decode()) for props, body in got}
    assert sorted(replies) == ["c-count", "c-plain"]
    reason, body = replies["c-plain"]
    assert reason == body and reason.startswith("not routed: plain-text body 'nospace' has no "
                                                "space")
    assert replies["c-count"][0].startswith("not routed: header x-taskqueue-retries is 'many'")
    wait_for(lambda: broker.counts("taskqueue_dead")[0] == 3, 10, "three dead letters")
    # The replies went on the dispatcher's reply connection: every later input is still
    # acked once its own copy is confirmed, none early, none left
    for n in range(20):
        broker.submit("recorder", {"id": f"after{n}"})
    wait_for(lambda: len(records.ids()) == 20, 30, "the 20 tasks after the replies")
    wait_for(lambda: unacked(broker.vhost, "taskqueue") == 0, 10, "taskqueue settled")
    assert broker.drain(own) == [] and broker.counts("taskqueue")[0] == 0


@pytest.mark.timeout(60)
def test_a_call_for_a_type_whose_queue_the_broker_refuses_fails_within_1_s(
        broker, start_pool, records, client):
    # Given worker_recorder made by someone else as a classic queue: the dispatcher's
    # declare is refused, and it dead-letters the type's tasks (no worker takes them)
    broker.channel.queue_declare("worker_recorder", durable=True)
    start_pool("[DEFAULT]\nworkers: 0\n", command="dispatcher")
    wait_for(lambda: broker.counts("taskqueue")[1] == 1, 20, "the dispatcher consuming")
    started = time.time()
    with pytest.raises(TaskFailed) as failed:
        client.call("recorder", {"id": "stuck"}, timeout=30)
    assert time.time() - started < PROMPT
    assert failed.value.reason.startswith("not routed: queue 'worker_recorder' already exists "
                                          "with other arguments"), failed.value.reason
    [(props, _)] = wait_for(lambda: broker.drain("taskqueue_dead"), 10, "the dead letter")
    assert props.message_id == failed.value.task_id


def unacked(vhost, queue):
    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "--no-table-headers",
                          "name", "messages_unacknowledged"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    return next(int(n) for name, n in (line.split() for line in out.splitlines())
                if name == queue)
