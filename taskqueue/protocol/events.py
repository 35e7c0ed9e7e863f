"""Task events: each stage of a task's life, as written to the events stream (pure).

Who writes which event:

- `submitted`: taskqueue's clients (Client.submit, submit_many, call; `taskqueue
  submit`), once the broker confirmed the task;
- `routed`: the dispatcher, once it forwarded the task to its `worker_<type>`;
- `started`: the worker, as it hands the task to the plugin (`attempt` counts
  retries: 1 for the first run; `redelivered` when the broker brings it again);
- `done`: the plugin acked it (`duration`);
- `retried`: it goes through the delay chain again (`delay`, `reason`);
- `requeued`: given back to its queue (a nack with requeue, a copy the broker refused);
- `failed`: the plugin raised or rejected it and it went to taskqueue_dead (`reason`);
- `dead`: taskqueue dead-lettered it with a reason (refused, delivery limit,
  retries spent, unroutable: `reason`).

Events are telemetry. They travel in batches, at most BATCH events or FLUSH
seconds old, unconfirmed: a process killed loses the events of its last
FLUSH seconds, a connection lost those on the wire. A task's path never waits
for them. One AMQP message holds one batch: its body is JSON lines (one object
per event, UTF-8), content type CONTENT_TYPE, its `timestamp` property the
batch's time. Every event carries who wrote it (host, child, pid), so that a
reader needs no other context.

The stream is a RabbitMQ stream queue (x-queue-type stream) named STREAM, with
its retention set by the first process that declares it (stream_arguments).
Whoever may publish to the vhost may write into it: a reader trusts nothing of
what it finds (decode: bounded, typed, unknown keys dropped).
"""
import json
import math
import os
import socket
import time

#: The stream's name (one per vhost). Not beginning with taskqueue_ or worker_... it
#: does begin with `taskqueue`: no reply may go there (replies.is_own).
STREAM = "taskqueue_events"
#: Every kind of event, in the order of a task's life.
KINDS = ("submitted", "routed", "started", "retried", "requeued", "done", "failed", "dead",
         "expired", "cancelled")
#: The kinds that end a task's life (one of them is the last word on it).
FINAL = ("done", "failed", "dead", "expired", "cancelled")
CONTENT_TYPE = "application/json"
#: Most events in one message, and the longest an event waits for its batch (seconds).
BATCH = 256
FLUSH = 0.25
#: Default retention: 7 days; the stream's size is capped too (RabbitMQ drops whole
#: segments, the oldest first, past either).
DEFAULT_RETENTION = 7 * 86400
DEFAULT_MAX_BYTES = 2**30
#: A segment of the stream: the unit RabbitMQ deletes. Small enough that retention
#: bites on a quiet system too (RabbitMQ's default is 500 MB).
SEGMENT_BYTES = 32 * 2**20
#: Longest reason kept, in characters; other strings (ids, names) are shorter.
MAX_REASON = 1000
MAX_TEXT = 200
#: A message bigger than this is not read (a batch of BATCH events is ~100 KB at most).
MAX_MESSAGE = 2**20

#: The keys of an event and what each holds; decode keeps these only.
_TEXT = ("event", "task", "type", "reason", "trace")
_NUMBERS = ("at", "duration", "delay")
_INTEGERS = ("attempt",)
_FLAGS = ("redelivered",)


def source(child):
    """Who writes: this host and process, as every event of it names them."""
    return {"host": socket.gethostname(), "child": child, "pid": os.getpid()}


def event(kind, task, worker_type, at=None, **fields):
    """One event: `kind` (KINDS) of `task` (its id) of `worker_type`, at `at` (seconds
    since the epoch; None: now); `fields` among attempt, redelivered, duration, delay,
    reason, trace (None values are left out). Who wrote it goes with its batch (encode)."""
    out = {"event": kind, "task": task, "type": worker_type,
           "at": round(time.time() if at is None else at, 3)}
    for key, value in fields.items():
        if value is not None:
            out[key] = value
    if "reason" in out:
        out["reason"] = str(out["reason"])[:MAX_REASON]
    return out


def encode(origin, batch):
    """A batch of events written by `origin` (source()) as a message body: one JSON
    object, {"host", "child", "pid", "events": [...]}: one encoder call for the batch
    (a line per event cost twice as much in a worker's busiest loop)."""
    return json.dumps({**origin, "events": batch}, separators=(",", ":"),
                      ensure_ascii=False).encode()


def decode(body):
    """(events, problems) of a message body read from the stream: each valid event as a
    dict of known keys with values of their types (longer strings cut, non-finite
    numbers dropped), its writer's host, child and pid merged in; each event (or
    message) that is not one counted in `problems`."""
    if not isinstance(body, (bytes, bytearray)) or len(body) > MAX_MESSAGE:
        return [], 1
    try:
        raw = json.loads(bytes(body).decode())
    except (ValueError, RecursionError):    # UnicodeDecodeError is a ValueError
        return [], 1
    if not isinstance(raw, dict) or not isinstance(raw.get("events"), list):
        return [], 1
    origin = _typed(raw, ("host", "child"), (), ("pid",))
    found, problems = [], 0
    for item in raw["events"]:
        one = _decode_event(item, origin)
        if one is None:
            problems += 1
        else:
            found.append(one)
    return found, problems


def _decode_event(raw, origin):
    if not isinstance(raw, dict):
        return None
    out = dict(origin)
    out.update(_typed(raw, _TEXT, _NUMBERS, _INTEGERS))
    for key in _FLAGS:
        if isinstance(raw.get(key), bool):
            out[key] = raw[key]
    if not all(k in out for k in ("event", "task", "at")):
        return None
    return out


def _typed(raw, texts, numbers, integers):
    """The keys of `raw` among those named whose values have their type, bounded."""
    out = {}
    for key in texts:
        value = raw.get(key)
        if isinstance(value, str):
            out[key] = value[:MAX_REASON if key == "reason" else MAX_TEXT]
    for key in numbers:
        value = raw.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isfinite(value):
            out[key] = float(value)
    for key in integers:
        value = raw.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
            out[key] = value
    return out


def stream_arguments(retention, max_bytes):
    """The stream's arguments: `retention` seconds, `max_bytes` at most."""
    return {"x-queue-type": "stream", "x-max-age": f"{int(retention)}s",
            "x-max-length-bytes": int(max_bytes),
            "x-stream-max-segment-size-bytes": min(SEGMENT_BYTES, int(max_bytes))}


def explain_refusal(reason):
    """Words for the broker's refusal to declare the stream."""
    return f"declaring {STREAM}: {getattr(reason, 'reply_text', reason)}"


def kept_as_found(reason):
    """Whether a refused declare means the stream exists with other arguments (another
    host's retention, a policy's): then it is used as it is. The broker names the
    first argument that differs only, so a queue of another type by that name
    cannot be told apart here: only who may configure the vhost can make one."""
    return "inequivalent arg" in str(getattr(reason, "reply_text", reason))
