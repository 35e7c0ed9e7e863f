"""The metrics the supervisor counts, their text exposition, and its HTTP answer (metrics.py).

The text is read back with prometheus_client's parser (tests only): what a
real scraper understands is the contract, not our own reading of it.
"""
import contextlib
import signal
import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from taskqueue.supervision import metrics
from taskqueue.supervision.lifecycle import ChildState
from taskqueue.supervision.specs import ChildSpec
from taskqueue.supervision.supervisor import Supervisor

pytestmark = pytest.mark.timeout(10)


def target(ctx):
    return 0


def supervisor():
    return Supervisor([ChildSpec("dispatcher", 1, target, queue="taskqueue", kind="dispatcher"),
                       ChildSpec("worker2/bifh1", 2, target, queue="worker_worker2")])


def samples(text):
    """{(sample name, frozenset of labels): value} of a whole exposition."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def labels(**kv):
    return frozenset(kv.items())


def exited(code):
    return code << 8        # a waitpid status


@pytest.mark.parametrize("status, killed_for, cause", [
    (exited(0), None, "stopped"),
    (exited(4), None, "plugin_load"),
    (exited(3), None, "connection"),
    (exited(7), None, "recycled"),
    (exited(42), None, "exit_42"),
    (signal.SIGKILL, None, "SIGKILL"),
    (signal.SIGABRT, None, "SIGABRT"),
    (signal.SIGKILL, "task_timeout", "task_timeout"),
])
def test_exit_cause_names_the_exit_code_or_the_signal(status, killed_for, cause):
    assert metrics.exit_cause(status, killed_for) == cause


def test_a_duration_on_a_bucket_bound_counts_in_that_bucket():
    histogram = metrics.Histogram()
    for value in (0.1, 0.1000001, 5000.0):
        histogram.observe(value)
    index = metrics.DURATION_BUCKETS.index(0.1)
    assert histogram.buckets[index] == 1 and histogram.buckets[index + 1] == 1
    assert sum(histogram.buckets) == 2 and histogram.count == 3   # 5000 s: only in +Inf


def test_exposition_parses_and_counts_tasks_durations_exits_restarts_and_children():
    # Given a supervisor that saw tasks end, a child die mid-task and restart
    sup = supervisor()
    sup.started_at = 0.0
    group = "worker2/bifh1"
    for outcome, seconds in (("ack", 0.02), ("ack", 1.5), ("raised", 0.3), ("dead", 0.0)):
        sup.metrics.task_ended(group, outcome, seconds)
    sup.metrics.task_ended(group, metrics.KILLED)
    sup.metrics.child_exited(group, "SIGKILL")
    sup.metrics.child_restarted(group)
    dispatcher, busy, backoff = sup.slots
    dispatcher.state = busy.state = ChildState.RUNNING
    busy.task = "m-1"
    backoff.state = ChildState.BACKOFF
    # When scraped
    got = samples(metrics.render(sup, now=10.0))
    # Then every outcome of a worker group has a series, zero or not
    w = dict(group=group, type="worker2")
    assert got["taskqueue_tasks_total", labels(**w, outcome="ack")] == 2
    assert got["taskqueue_tasks_total", labels(**w, outcome="raised")] == 1
    assert got["taskqueue_tasks_total", labels(**w, outcome="dead")] == 1
    assert got["taskqueue_tasks_total", labels(**w, outcome="killed")] == 1
    assert got["taskqueue_tasks_total", labels(**w, outcome="requeue")] == 0
    assert not any(name == "taskqueue_tasks_total" and ("group", "dispatcher") in key
                   for name, key in got)
    # durations of the tasks that ran: not the dead one, not the killed one
    assert got["taskqueue_task_duration_seconds_count", labels(**w)] == 3
    assert got["taskqueue_task_duration_seconds_sum", labels(**w)] == pytest.approx(1.82)
    assert got["taskqueue_task_duration_seconds_bucket", labels(**w, le="0.025")] == 1
    assert got["taskqueue_task_duration_seconds_bucket", labels(**w, le="1.0")] == 2
    assert got["taskqueue_task_duration_seconds_bucket", labels(**w, le="+Inf")] == 3
    assert got["taskqueue_child_exits_total", labels(**w, cause="SIGKILL")] == 1
    assert got["taskqueue_child_restarts_total", labels(**w)] == 1
    assert got["taskqueue_child_restarts_total", labels(group="dispatcher", type="dispatcher")] == 0
    assert got["taskqueue_children", labels(**w, state="running")] == 1
    assert got["taskqueue_children", labels(**w, state="backoff")] == 1
    assert got["taskqueue_children", labels(**w, state="quarantined")] == 0
    assert got["taskqueue_children_wanted", labels(**w)] == 2
    assert got["taskqueue_children_busy", labels(**w)] == 1
    assert got["taskqueue_supervisor_start_time_seconds", labels()] > 1e9


def test_label_values_are_escaped():
    sup = Supervisor([ChildSpec('odd"name\\with\nall', 1, target, queue="worker_odd")])
    got = samples(metrics.render(sup))
    assert got["taskqueue_children_wanted", labels(group='odd"name\\with\nall',
                                                   type='odd"name\\with\nall')] == 1


def test_done_reports_are_counted_per_group_and_malformed_ones_ignored():
    sup = supervisor()
    slot = sup.slots[1]
    slot.pid = 4242
    sup._by_pid[4242] = slot
    sup.handle_reports([("busy", 4242, "m-1"), ("done", 4242, "ack 0.250000"),
                        ("busy", 4242, "m-2"), ("done", 4242, "exploded 1.0"),
                        ("busy", 4242, "m-3"), ("done", 4242, "raised nan")])
    assert sup.metrics.tasks == {("worker2/bifh1", "ack"): 1}
    assert sup.metrics.durations["worker2/bifh1"].sum == 0.25
    assert slot.tasks_done == 3   # counted as done all the same: the child settled them


# -- the HTTP exchange ------------------------------------------------------------------

def exchange(request):
    """Send `request` to metrics.answer over a real socket pair; return the raw response."""
    client, server = socket.socketpair()
    with client, server:
        client.sendall(request)
        client.shutdown(socket.SHUT_WR)   # all sent: an answer that reads on meets the end
        metrics.answer(supervisor(), server)
        with contextlib.suppress(OSError):   # shut already by an answer that reads on
            server.shutdown(socket.SHUT_WR)
        return b"".join(iter(lambda: client.recv(65536), b""))


def test_get_metrics_answers_the_exposition_with_its_content_type():
    response = exchange(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: text/plain; version=0.0.4; charset=utf-8" in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert samples(body.decode())["taskqueue_children_wanted",
                                  labels(group="dispatcher", type="dispatcher")] == 1


def test_head_answers_headers_only():
    response = exchange(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 200 OK\r\n") and response.endswith(b"\r\n\r\n")


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET /other HTTP/1.1\r\n\r\n", b"404 Not Found"),
    (b"GET / HTTP/1.1\r\n\r\n", b"404 Not Found"),            # nothing but /metrics
    (b"GET /metrics/../x HTTP/1.1\r\n\r\n", b"404 Not Found"),
    (b"GET http://x/metrics HTTP/1.1\r\n\r\n", b"404 Not Found"),
    (b"PUT /metrics HTTP/1.1\r\n\r\n", b"405 Method Not Allowed"),
    (b"get /metrics HTTP/1.1\r\n\r\n", b"405 Method Not Allowed"),
    (b"GET /metrics\r\n\r\n", b"400 Bad Request"),
    (b"\x00\xff\x16\x03\x01\n\n", b"400 Bad Request"),          # binary junk, a TLS hello
    (b"POST /metrics HTTP/1.1\r\n\r\n", b"405 Method Not Allowed"),
    (b"hello\r\n\r\n", b"400 Bad Request"),
    (b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 2000, b"431 Request Header Fields Too Large"),
])
def test_other_requests_get_an_http_error(request_bytes, status):
    assert exchange(request_bytes).startswith(b"HTTP/1.1 " + status + b"\r\n")
