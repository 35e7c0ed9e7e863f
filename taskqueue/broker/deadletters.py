"""What a dead letter carries: the copy taskqueue makes of a message it dead-letters.

The copy keeps the body and properties and gains headers that say why and where
it came from. `failure_reply` is what the task's caller, if it has one, gets then
(protocol/replies.py), from the worker and the dispatcher alike. `task_key` names a
task between processes (the supervisor's graveyard, supervision/graveyard.py, counts
deaths by it).
"""
import hashlib
import time

from taskqueue import redact
from taskqueue.broker import fielddecode, inbound, pikaparams
from taskqueue.protocol import replies, topology

REASON_HEADER = "x-taskqueue-reason"
SOURCE_HEADER = "x-taskqueue-queue"
#: A message whose headers were not decoded (fielddecode.py) keeps their bytes here.
RAW_HEADERS = "x-taskqueue-raw-headers"
#: At most this many of those bytes (a table refused for its size is bigger), so that the
#: dead letter's own table, with the reason, stays within fielddecode.MAX_TABLE_BYTES and
#: `taskqueue dead list` reads it.
MAX_RAW_KEPT = 60 * 1024
#: Headers the broker set on a message for its own queue; a copy starts afresh.
BROKER_HEADERS = ("x-delivery-count",)


def without_broker_headers(headers):
    return {k: v for k, v in headers.items() if k not in BROKER_HEADERS}


def dead_properties(props, reason, queue=topology.TASK_QUEUE, **details):
    """The message's properties, persistent, with the reason and where it came from;
    `details` become more `x-taskqueue-<name>` headers. Headers that were not decoded
    are kept as their bytes (RAW_HEADERS); the dead-letter headers the message had
    already (a publisher's, inbound.py) are not."""
    out = pikaparams.copy_properties(props)
    out.delivery_mode = pikaparams.PERSISTENT
    undecoded = props.headers if isinstance(props.headers, fielddecode.UndecodedTable) else None
    out.headers = pikaparams.amqp_safe(inbound.without_forged(
        without_broker_headers(props.headers or {})))
    if undecoded is not None:
        out.headers[RAW_HEADERS] = undecoded.raw[:MAX_RAW_KEPT]
        if len(undecoded.raw) > MAX_RAW_KEPT:
            reason += f" (the first {MAX_RAW_KEPT} of their {len(undecoded.raw)} bytes kept)"
    out.headers[REASON_HEADER] = redact.redact(reason)   # a plugin's error may quote anything
    out.headers[SOURCE_HEADER] = queue
    out.headers["x-taskqueue-dead-at"] = int(time.time())
    for name, value in details.items():
        out.headers[f"x-taskqueue-{name.replace('_', '-')}"] = (
            redact.redact(value) if isinstance(value, str) else value)
    return out


def failure_reply(props, reason, reply_queues=()):
    """The failure reply (replies.failure) owed to whoever waits for the task with the
    properties `props`, which ended without an answer for `reason`: (reply_to, body,
    properties) to publish on the default exchange, or None when its reply_to is none a
    reply may go to (replies.allowed, with `reply_queues`, the group's option)."""
    reply_to = getattr(props, "reply_to", None)
    if not replies.allowed(reply_to, reply_queues):
        return None
    body, headers = replies.failure(reason)
    return reply_to, body, pikaparams.properties(
        correlation_id=props.correlation_id or props.message_id,
        content_type=replies.FAILED_CONTENT_TYPE, headers=headers)


def task_key(props, body):
    """What names a task between processes: its message id (printable, no spaces,
    200 characters at most: it travels in one line of the report pipe), else a
    digest of its body."""
    if props.message_id:
        return "".join(c if c.isprintable() and not c.isspace() else "?"
                       for c in props.message_id[:200])
    return "sha1-" + hashlib.sha1(body).hexdigest()
