"""taskqueue.testing.run_task against the real thing: the same plugin (tqtest's recorder),
the same tasks, once through a pool on the real broker and once through run_task; each
attempt must end the same way, with the same reason and delay, and whoever waits for the
task must get the same replies.

The pool's side is read from what it leaves on the broker: the task events
(protocol/events.py) of each attempt, and the replies in a reply queue of the test's own.
Its words for an attempt's end are the events' kinds: done is run_task's `ack`, retried
`retry`, dead `dead`, requeued `requeue`, and failed is `raised` or `reject` as its
reason says (the plugin raised, or rejected it).
"""
import json
import uuid

import pytest

from support import serving, stream_events, wait_for
from taskqueue.protocol import events, replies, retries
from taskqueue.testing import run_task

#: recorder retries once after 1 s (then dead-letters); recorder2 never retries.
SECTIONS = {"recorder": {"max_retries": "1", "retry_delay": "1"}, "recorder2": {}}
#: name: (worker type, the recorder's workitem options). The name is the workitem's id.
CASES = {
    "ack": ("recorder", {}),
    "unsettled": ("recorder", {"noack": True}),
    "twice": ("recorder", {"twice": True}),
    "reject": ("recorder", {"reject": True}),
    "retry": ("recorder", {"retry": 1, "retry_times": 1}),
    "dead": ("recorder", {"raise": True}),       # retried once, then dead
    "raised": ("recorder2", {"raise": True}),    # no max_retries: dead-lettered at once
    "reply": ("recorder", {"reply": "hi"}),
}
#: How the pool's events name an attempt's end, in run_task's words.
EVENT_OUTCOMES = {"done": "ack", "retried": "retry", "dead": "dead", "requeued": "requeue"}


def pool_config(record_dir):
    text = "[DEFAULT]\nworkers: 0\n"
    for worker_type, options in SECTIONS.items():
        text += f"\n[{worker_type}]\nworkers: 1\nrecord_dir: {record_dir}\n"
        text += "".join(f"{name}: {value}\n" for name, value in options.items())
    return text


def ending(event):
    """(outcome, reason, delay) of an attempt that ended in `event`; the delay in whole
    seconds (a backoff's jitter differs between two runs)."""
    kind = event["event"]
    outcome = EVENT_OUTCOMES.get(kind) or (
        "raised" if event.get("reason", "").startswith("raised ") else "reject")
    delay = event.get("delay")
    return outcome, event.get("reason"), None if delay is None else round(delay)


def attempts_on_the_pool(vhost, task_id):
    """ending() of each attempt of the task on the pool, once it has a final event."""
    found = wait_for(lambda: (lambda found: found if {e["event"] for e in found}
                              & set(events.FINAL) else None)(stream_events(vhost, task_id)),
                     30, f"a final event of {task_id}")
    out, running = [], False
    for event in found:
        if event["event"] == "started":
            running = True
        elif running and event["event"] in ("done", "retried", "failed", "dead", "requeued"):
            out.append(ending(event))
            running = False
    return out


def attempts_through_run_task(worker_type, workitem, record_dir, reply_to):
    """(ending of each attempt, every reply) of the task run by run_task, attempt after
    attempt as the pool would deliver it again (x-taskqueue-retries counting)."""
    config = {"record_dir": record_dir, **SECTIONS[worker_type]}
    out, sent = [], []
    for done in range(5):
        result = run_task(worker_type, workitem, config=config, reply_to=reply_to,
                          headers={retries.RETRIES_HEADER: done} if done else None)
        delay = None if result.delay is None else round(result.delay)
        out.append((result.outcome, result.reason, delay))
        sent.extend((r.body, r.content_type, r.failure) for r in result.replies)
        if result.outcome != "retry":
            return out, [comparable(*reply) for reply in sent]
    pytest.fail(f"run_task retried {workitem} 5 times")


def comparable(body, content_type, failure):
    """A reply without what differs between processes (the recorder's pid)."""
    if content_type == "application/json":
        body = {k: v for k, v in json.loads(body).items() if k != "pid"}
    return body, content_type, failure


@pytest.mark.timeout(120)
def test_each_outcome_of_a_plugin_is_the_same_on_a_real_pool_and_through_run_task(
        broker, vhost, start_pool, records, tmp_path):
    # Given a pool serving the recorder, and a reply queue of the test's own
    serving(broker, start_pool, pool_config(records.path), "worker_recorder")
    wait_for(lambda: broker.counts("worker_recorder2")[1] >= 1, 20, "a consumer of recorder2")
    reply_queue = broker.channel.queue_declare("", exclusive=True).method.queue
    # When each task goes to the pool, waited for by that queue
    ids = {}
    for name, (worker_type, options) in CASES.items():
        ids[name] = f"both-{name}-{uuid.uuid4().hex[:8]}"
        broker.submit_one_hop(worker_type, {"id": name, **options}, message_id=ids[name],
                              correlation_id=ids[name], reply_to=reply_queue)
    # ... and through run_task
    in_process, kit_replies = {}, {}
    for name, (worker_type, options) in CASES.items():
        in_process[name], kit_replies[name] = attempts_through_run_task(
            worker_type, {"id": name, **options}, str(tmp_path), reply_queue)
    on_pool = {name: attempts_on_the_pool(vhost, ids[name]) for name in CASES}
    replied, expected = {}, sum(len(sent) for sent in kit_replies.values())

    def all_replies():
        for props, body in broker.drain(reply_queue):
            replied.setdefault(props.correlation_id, []).append(comparable(
                body, props.content_type, replies.failure_reason(props.headers)))
        return sum(len(sent) for sent in replied.values()) >= expected
    wait_for(all_replies, 20, lambda: f"{expected} replies; got {replied}")
    # Then every attempt ended alike, and the waiting side got the same answers
    assert on_pool == in_process
    assert {name: replied.get(ids[name], []) for name in CASES} == kit_replies
    assert [outcome for outcome, _, _ in on_pool["dead"]] == ["retry", "dead"]
    assert {attempts[-1][0] for attempts in on_pool.values()} == \
        {"ack", "reject", "dead", "raised"}
