"""The supervisor's Prometheus metrics: counted from what it already sees, and the
HTTP exchange that hands them to a scraper (endpoints.py listens).

Counters grow on the supervisor's own events (a child's `done` report, an
exit, a restart); gauges are read from the slots when scraped, the queue gauges from the broker
(queuegauges.py asks, at most every few seconds). The text
exposition format 0.0.4 is written here: one process, a few metrics, no
client library. Every metric has the labels `group` (`worker2/bifh1`) and
`type` (`worker2`; `dispatcher` for the dispatcher's group).
"""
import bisect
import math
import os
import signal
import socket
import time
from collections import Counter

from taskqueue.supervision.lifecycle import (EXITS, NOT_RUN, TASK_OUTCOMES, ChildState,
                                             exit_code_of)

#: Upper bounds of the task duration histogram's buckets, in seconds (+Inf follows).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    60.0, 300.0, 900.0, 1800.0)
#: The `outcome` of a task whose process died while handling it (the supervisor
#: sees it; the child cannot report it). The others are lifecycle.TASK_OUTCOMES.
KILLED = "killed"
OUTCOMES = (*TASK_OUTCOMES, KILLED)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Longest request head read; a scraper sends a few hundred bytes.
MAX_REQUEST = 8192
#: Most bytes of a refused request read and dropped after answering it (see _refuse).
DISCARD_MAX = 1 << 20


def exit_cause(status, killed_for=None):
    """The `cause` label of a waitpid status: `plugin_load` (lifecycle.EXITS), `SIGKILL`,
    `exit_9`, or why the supervisor killed it (`task_timeout`)."""
    if killed_for:
        return killed_for
    code = exit_code_of(status)
    if code is None:
        sig = os.WTERMSIG(status)
        try:
            return signal.Signals(sig).name
        except ValueError:
            return f"signal_{sig}"
    return EXITS[code].cause if code in EXITS else f"exit_{code}"


class Histogram:
    def __init__(self):
        self.buckets = [0] * len(DURATION_BUCKETS)   # not cumulative; summed when written
        self.count = 0
        self.sum = 0.0

    def observe(self, value):
        index = bisect.bisect_left(DURATION_BUCKETS, value)   # le: a value on a bound counts in it
        if index < len(self.buckets):
            self.buckets[index] += 1
        self.count += 1
        self.sum += value


class Registry:
    """What the counters have counted since the supervisor started, by group name."""

    def __init__(self):
        self.tasks = Counter()          # (group, outcome)
        self.durations = {}             # group -> Histogram
        self.exits = Counter()          # (group, cause)
        self.restarts = Counter()       # group

    def task_ended(self, group, outcome, seconds=None):
        """A task's handling ended after `seconds` (None: unknown, the process died)."""
        self.tasks[group, outcome] += 1
        # A task not run (dead-lettered, expired, cancelled): its 0 s would only skew the
        # histogram; a cancelled one that ran was stopped partway.
        if seconds is not None and outcome not in NOT_RUN:
            histogram = self.durations.get(group)
            if histogram is None:   # not setdefault: it would build one per task
                histogram = self.durations[group] = Histogram()
            histogram.observe(seconds)

    def child_exited(self, group, cause):
        self.exits[group, cause] += 1

    def child_restarted(self, group):
        self.restarts[group] += 1


def render(supervisor, now=None, queues=None):
    """The text exposition of everything, from the registry and the slots, and from
    `queues` (a queuegauges.Reading) the queue gauges."""
    now = time.monotonic() if now is None else now
    specs = {spec.name: spec for spec in supervisor.specs}
    slots = {}
    for slot in supervisor.slots:     # retired slots of a reload too, while they stop
        slots.setdefault(slot.spec.name, []).append(slot)
    out = []
    metric = _writer(out)
    _write_counters(metric, supervisor.metrics, specs)
    _write_gauges(metric, specs, slots)
    metric("taskqueue_supervisor_start_time_seconds", "gauge",
           "When the supervisor started, in seconds since the epoch.",
           [({}, round(time.time() - (now - supervisor.started_at), 3))])
    if queues is not None:
        _write_queue_gauges(metric, queues)
    return "".join(out)


def _write_counters(metric, registry, specs):
    # Series known in advance start at 0, so that rate() sees their first increase.
    workers = [name for name, spec in specs.items() if spec.kind == "worker"]
    tasks = Counter({(group, outcome): 0 for group in workers for outcome in OUTCOMES})
    tasks.update(registry.tasks)
    metric("taskqueue_tasks_total", "counter",
           f"Tasks whose handling ended, by outcome: {', '.join(OUTCOMES)}.",
           [({"group": g, "outcome": o}, n) for (g, o), n in sorted(tasks.items())])
    metric("taskqueue_task_duration_seconds", "histogram",
           "Seconds handle_task took, for tasks it handled to an outcome.",
           [sample for group, histogram in sorted(registry.durations.items())
            for sample in _histogram_samples(group, histogram)])
    metric("taskqueue_child_exits_total", "counter",
           "Child processes that ended, by cause (exit code name, signal or task_timeout).",
           [({"group": g, "cause": c}, n) for (g, c), n in sorted(registry.exits.items())])
    restarts = Counter({group: 0 for group in specs})
    restarts.update(registry.restarts)
    metric("taskqueue_child_restarts_total", "counter",
           "Child processes started again after one ended.",
           [({"group": g}, n) for g, n in sorted(restarts.items())])


def _write_gauges(metric, specs, slots):
    groups = sorted(set(specs) | set(slots))
    metric("taskqueue_children", "gauge", "Child processes by state.",
           [({"group": g, "state": state.value.lower()},
             sum(slot.state is state for slot in slots.get(g, ())))
            for g in groups for state in ChildState])
    metric("taskqueue_children_wanted", "gauge", "Child processes the config asks for.",
           [({"group": g}, specs[g].processes if g in specs else 0) for g in groups])
    metric("taskqueue_children_busy", "gauge", "Child processes handling a task now.",
           [({"group": g}, sum(slot.task is not None for slot in slots.get(g, ())))
            for g in groups])


def _write_queue_gauges(metric, reading):
    metric("taskqueue_broker_up", "gauge",
           "1 if the broker answered this scrape's questions about the queues, else 0.",
           [({}, int(reading.broker_up))])
    # No figures rather than old ones: a source that did not answer has its gauges absent.
    # The broker and the management API are asked apart: either may answer alone.
    if reading.broker_up:
        metric("taskqueue_queue_messages_ready", "gauge",
               "Messages ready for delivery in the queue (not delivered, not delayed).",
               [({"queue": queue}, ready) for queue, (ready, _) in sorted(reading.counts.items())])
        metric("taskqueue_queue_consumers", "gauge", "Consumers of the queue.",
               [({"queue": queue}, consumers)
                for queue, (_, consumers) in sorted(reading.counts.items())])
        metric("taskqueue_delayed_messages", "gauge",
               "Tasks waiting out a delay or a retry's wait in the delay queues.",
               [({}, reading.delayed)])
    if not reading.management_asked:
        return
    metric("taskqueue_management_up", "gauge",
           "1 if RabbitMQ's management API answered this scrape's questions, else 0.",
           [({}, int(reading.management_error is None))])
    metric("taskqueue_queue_messages_unacked", "gauge",
           "Messages delivered to a consumer and not yet acked (management API).",
           [({"queue": queue}, n) for queue, n in sorted((reading.unacked or {}).items())])


def _histogram_samples(group, histogram):
    cumulative = 0
    for bound, count in zip(DURATION_BUCKETS, histogram.buckets):
        cumulative += count
        # `le` as client libraries write it: 1.0, not 1
        yield {"group": group, "le": repr(float(bound))}, cumulative, "_bucket"
    yield {"group": group, "le": "+Inf"}, histogram.count, "_bucket"
    yield {"group": group}, histogram.sum, "_sum"
    yield {"group": group}, histogram.count, "_count"


def _writer(out):
    def metric(name, kind, help_text, samples):
        out.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")
        for labels, value, *suffix in samples:
            if "group" in labels:   # every group's `type`, right after it
                labels = {"group": labels["group"], "type": labels["group"].partition("/")[0],
                          **labels}
            text = ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items())
            out.append(f"{name}{''.join(suffix)}{{{text}}} {_number(value)}\n" if text
                       else f"{name} {_number(value)}\n")
    return metric


def _escape(value):
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value):
    if isinstance(value, int) or (math.isfinite(value) and value == int(value)):
        return str(int(value))
    return repr(float(value))


# -- the HTTP endpoint --------------------------------------------------------------------

def answer(supervisor, conn, queue_gauges=None):
    """One HTTP/1.0-style exchange: GET (or HEAD) /metrics, then close. `queue_gauges`
    (queuegauges.QueueGauges) is read for each GET."""
    head = b""
    while b"\r\n\r\n" not in head and b"\n\n" not in head:
        data = conn.recv(4096)
        if not data:
            return
        head += data
        if len(head) > MAX_REQUEST:
            return _refuse(conn, "431 Request Header Fields Too Large", "request too large\n")
    parts = head.split(b"\n", 1)[0].decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return _refuse(conn, "400 Bad Request", "expected an HTTP request\n")
    method, path = parts[0], parts[1].split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        return _refuse(conn, "405 Method Not Allowed", "GET /metrics\n", {"Allow": "GET, HEAD"})
    if path != "/metrics":   # nothing else is served, not even a page at /
        return _refuse(conn, "404 Not Found", "the metrics are at /metrics\n")
    queues = queue_gauges.read(supervisor.specs) if queue_gauges and method == "GET" else None
    _respond(conn, "200 OK", render(supervisor, queues=queues), {"Content-Type": CONTENT_TYPE},
             head_only=method == "HEAD")


def _refuse(conn, status, body, headers=None):
    """Answer with an error, close our side, then read what the client still sends
    (a body, the rest of an oversized head), up to DISCARD_MAX bytes.

    Closing a socket with unread data makes the kernel reset the connection,
    and a reset can destroy the answer before the client has read it. The
    endpoint's client timeout bounds the time this takes.
    """
    _respond(conn, status, body, headers)
    conn.shutdown(socket.SHUT_WR)
    left = DISCARD_MAX
    while left > 0:
        data = conn.recv(min(65536, left))
        if not data:
            return
        left -= len(data)


def _respond(conn, status, body, headers=None, head_only=False):
    data = body.encode()
    headers = {"Content-Type": "text/plain; charset=utf-8", **(headers or {}),
               "Content-Length": str(len(data)), "Connection": "close"}
    text = f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    conn.sendall(text.encode() + b"\r\n" + (b"" if head_only else data))
