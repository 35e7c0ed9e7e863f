"""A task's W3C trace context (traceparent, tracestate) on the real broker: carried
through the dispatcher, retries, delays and one hop, and named in the worker's log
lines (`trace=<id>`) after a retry; a hostile one is carried as it came and named nowhere.

The recorder plugin writes the headers each attempt arrived with (`trace`, as repr).
Where the test venv has opentelemetry-sdk (the pypi stack), the traced plugin sets it
up in a real worker and exports its spans to files."""
import json
import os
import subprocess

import pytest

from support import TASKQUEUE, config_text, recorder_config, serving, wait_for
from taskqueue.client import task_message, trace_headers
from taskqueue.protocol import topology

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"
TRACESTATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
#: How the recorder saw them arrive.
CARRIED = {"traceparent": repr(TRACEPARENT), "tracestate": repr(TRACESTATE)}
RETRYING = "max_retries: 1\nretry_delay: 1\n"


def attempts(records, task_id):
    """The task's start records, in the order of its attempts."""
    return sorted((r for r in records.all("start") if r["id"] == task_id),
                  key=lambda r: r["retries"])


def test_through_the_dispatcher_the_trace_survives_a_retry_and_names_the_workers_lines(
        broker, start_pool, records, client):
    pool = serving(broker, start_pool, recorder_config(records, extra=RETRYING),
                   "worker_recorder")
    # The envelope to `taskqueue`, as the specification's clients send it, with the trace.
    client.publish(topology.TASK_QUEUE, *task_message(
        "recorder", {"id": "routed", "fail_times": 1, "log": "routed done after a retry"},
        message_id="m-routed", trace=trace_headers(TRACEPARENT, TRACESTATE)))
    wait_for(lambda: records.ids() == ["routed"], 30, "the task done on its second attempt")
    first, second = attempts(records, "routed")
    # dispatcher -> worker; worker -> delay chain -> dispatcher -> worker
    assert [first["routing_key"], second["routing_key"]] == ["worker_recorder"] * 2
    assert first["trace"] == second["trace"] == CARRIED
    pool.wait_log(rf"task=m-routed trace={TRACE} WARNING: task m-routed \(delivery \d+\) raised")
    pool.wait_log(rf"task=m-routed trace={TRACE} INFO: task m-routed: retry 1 in ")
    pool.wait_log(rf"task=m-routed trace={TRACE} INFO: routed done after a retry")
    assert pool.stop() == 0


def test_one_hop_the_trace_survives_a_retry_a_delay_a_call_and_submit_many(
        broker, start_pool, records, client):
    pool = serving(broker, start_pool, recorder_config(records, extra=RETRYING),
                   "worker_recorder")
    trace = {"traceparent": TRACEPARENT, "tracestate": TRACESTATE}
    retried = client.submit("recorder", {"id": "onehop", "retry": 1, "retry_times": 1,
                                         "log": "one hop done after a retry"}, **trace)
    delayed = client.submit("recorder", {"id": "delayed", "log": "delayed done"}, delay=1,
                            **trace)
    assert client.call("recorder", {"id": "called", "reply": 1}, 30, **trace)
    client.submit_many("recorder", [{"id": "many1"}, {"id": "many2"}], **trace)
    wait_for(lambda: sorted(records.ids()) == ["called", "delayed", "many1", "many2", "onehop"],
             30, "every task done")
    first, second = attempts(records, "onehop")
    # one hop -> worker; worker -> delay chain -> dispatcher -> worker
    assert [first["routing_key"], second["routing_key"]] == ["recorder", "worker_recorder"]
    for record in records.all("start"):
        assert record["trace"] == CARRIED, record
    pool.wait_log(rf"task={retried} trace={TRACE} INFO: task {retried}: retry 1 in ")
    pool.wait_log(rf"task={retried} trace={TRACE} INFO: one hop done after a retry")
    pool.wait_log(rf"task={delayed} trace={TRACE} INFO: delayed done")
    assert pool.stop() == 0


#: Values no reader takes for a traceparent; each sent on both paths.
HOSTILE = {
    "upper": TRACEPARENT.upper(),
    "zero": f"00-{'0' * 32}-00f067aa0ba902b7-01",
    "ff": "ff" + TRACEPARENT[2:],
    "short": TRACEPARENT[:-1],
    "forging": TRACEPARENT + "\n2026-01-01 00:00:00,000 taskqueue[1] forged ERROR: line",
    "escape": "\x1b[2J\x00" + TRACEPARENT,
    "long": "x" * 10_000,
    "bytes": TRACEPARENT.encode(),
    "table": {"traceparent": TRACEPARENT},
    "number": 7,
}


def test_a_hostile_traceparent_is_carried_as_it_came_and_named_in_no_line(
        broker, start_pool, records):
    pool = serving(broker, start_pool, recorder_config(records), "worker_recorder")
    for name, value in HOSTILE.items():
        headers = {"traceparent": value, "tracestate": "\x1b]0;title\x07"}
        broker.submit("recorder", {"id": f"routed-{name}", "log": f"hostile routed-{name}"},
                      message_id=f"m-routed-{name}", headers=headers)
        broker.submit_one_hop("recorder", {"id": f"onehop-{name}", "log": f"hostile onehop-{name}"},
                              message_id=f"m-onehop-{name}", headers=headers)
    expected = sorted(f"{way}-{name}" for way in ("routed", "onehop") for name in HOSTILE)
    wait_for(lambda: sorted(records.ids()) == expected, 30, "every hostile task done")
    assert broker.counts("taskqueue_dead")[0] == 0       # telemetry refuses no task
    for record in records.all("start"):
        name = record["id"].split("-", 1)[1]
        assert record["trace"] == {"traceparent": repr(HOSTILE[name]),
                                   "tracestate": repr("\x1b]0;title\x07")}, record
    lines = pool.wait_log(r"^.* task=m-\w+-\w+ .*INFO: hostile .*$", count=len(expected))
    assert all("trace=" not in line for line in lines), lines
    log = pool.log()
    assert "forged" not in log and "\x1b" not in log and "trace=" not in log
    assert pool.stop() == 0


# -- the span, in a real worker whose plugin set up the OpenTelemetry SDK -----------

def spans(records):
    """Every span the traced plugin's processes exported, as dicts."""
    out = []
    for name in os.listdir(records.path):
        if name.startswith("spans."):
            with open(os.path.join(records.path, name)) as f:
                out.extend(json.loads(line) for line in f)
    return out


def task_spans(records, task_id):
    mine = [s for s in spans(records) if s["attributes"].get("taskqueue.task.id") == task_id]
    return sorted(mine, key=lambda s: s["attributes"]["taskqueue.task.attempt"])


def test_a_worker_with_opentelemetry_continues_the_trace_in_a_span_per_attempt(
        broker, start_pool, records, client):
    pytest.importorskip("opentelemetry.sdk")
    pool = serving(broker, start_pool, f"[DEFAULT]\nworkers: 0\n\n[traced]\nworkers: 1\n"
                   f"record_dir: {records.path}\n{RETRYING}", "worker_traced")
    traced = client.submit("traced", {"id": "traced", "fail_times": 1},
                           traceparent=TRACEPARENT, tracestate=TRACESTATE)
    alone = client.submit("traced", {"id": "alone"})
    first, second = wait_for(lambda: len(task_spans(records, traced)) == 2
                             and task_spans(records, traced), 30, "both attempts' spans")
    assert [first["name"], second["name"]] == ["taskqueue.task traced"] * 2
    for span, attempt, outcome, status in ((first, 1, "retry", "ERROR"),
                                           (second, 2, "ack", "UNSET")):
        assert span["trace_id"] == TRACE and span["parent_id"] == TRACEPARENT.split("-")[2]
        assert span["kind"] == "CONSUMER" and span["status"] == status
        assert span["attributes"] == {
            "taskqueue.task.id": traced, "taskqueue.task.type": "traced",
            "taskqueue.task.attempt": attempt, "taskqueue.task.outcome": outcome,
            "messaging.system": "rabbitmq"}
    # The first attempt raised: recorded on its span, marked failed (the task goes on).
    assert first["events"] == ["exception"] and second["events"] == []
    own = {s["name"]: s for s in spans(records) if s["name"].startswith("plugin traced")}
    assert own["plugin traced attempt 0"]["parent_id"] == first["span_id"]
    assert own["plugin traced attempt 1"]["parent_id"] == second["span_id"]
    # A task without a trace context: a trace of its own, from the worker's span.
    (root,) = wait_for(lambda: task_spans(records, alone), 30, "the untraced task's span")
    assert root["parent_id"] is None and root["trace_id"] != TRACE
    pool.wait_log(rf"task={traced} trace={TRACE} INFO: task {traced}: retry 1 in ")
    assert pool.stop() == 0


# -- taskqueue submit ----------------------------------------------------------------

def run(*args, env=None):
    return subprocess.run([TASKQUEUE, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_submit_sends_the_trace_of_its_option_or_of_its_environment(broker, workdir, vhost):
    path = f"{workdir}/config.ini"
    with open(path, "w") as f:
        f.write(config_text(vhost, "[DEFAULT]\nworkers: 0\n"))
    with open(f"{workdir}/tasks.jsonl", "w") as f:
        f.write("1\n2\n")
    other = f"00-{'1' * 32}-{'2' * 16}-00"
    assert run("submit", "--config", path, "recorder", "1", "--traceparent", TRACEPARENT,
               "--tracestate", TRACESTATE, env={"TRACEPARENT": other}).returncode == 0
    assert run("submit", "--config", path, "recorder", "2", "--delay", "0",
               env={"TRACEPARENT": other}).returncode == 0
    out = run("submit", "--config", path, "recorder", "--file", f"{workdir}/tasks.jsonl",
              "--traceparent", TRACEPARENT)
    assert out.returncode == 0, out.stderr
    ignored = run("submit", "--config", path, "recorder", "3", env={"TRACEPARENT": "00-\x1b"})
    assert ignored.returncode == 0 and ignored.stderr.startswith(
        "taskqueue: warning: TRACEPARENT/TRACESTATE of the environment ignored: traceparent "
        "'00-\\x1b' is not a W3C traceparent")
    # No worker_recorder: every task lands in taskqueue (one hop through the alternate
    # exchange; the delayed one through the chain).
    collected = []

    def all_five():
        collected.extend(broker.drain("taskqueue"))
        return collected if len(collected) >= 5 else None
    messages = wait_for(all_five, 15, "the 5 submitted tasks")
    traces = sorted((((p.headers.get("traceparent"), p.headers.get("tracestate")), body)
                     for p, body in messages), key=repr)
    assert traces == sorted([((TRACEPARENT, TRACESTATE), b"1"), ((other, None), b"2"),
                             ((TRACEPARENT, None), b"1"), ((TRACEPARENT, None), b"2"),
                             ((None, None), b"3")], key=repr)
    bad = run("submit", "--config", path, "recorder", "1", "--traceparent", "00-bad")
    assert bad.returncode == 2 and "--traceparent/--tracestate: traceparent '00-bad' is not " \
                                   "a W3C traceparent" in bad.stderr
