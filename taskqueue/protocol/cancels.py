"""Cancels: the records of the cancels stream, their bounds, and what is pending (pure).

`taskqueue cancel ID` and `Client.cancel(ID)` publish one record per task into
the RabbitMQ stream STREAM (confirmed: it outlives pools and broker restarts
and reaches every host); every worker process reads the stream from its
start before it starts a task, then follows it, and settles a cancelled task
as `cancelled` (runtime/cancels.py). A worker that settles one appends a
`settled` record, so that `taskqueue status` can count the cancels pending:
those no worker has settled yet (pending()).

A record is one JSON object per message, at most MAX_RECORD bytes:
    {"cancel": ID, "at": SECONDS, "host": ..., "by": ...}
    {"settled": ID, "at": SECONDS, "host": ..., "by": ..., "outcome": "cancelled"}
Whoever may publish to the vhost may write anything into the stream: decode()
bounds and types what it takes, and anything else is junk, counted, never
shown raw. An ID is what names a task between processes (deadletters.task_key:
its message id, printable, no spaces, at most MAX_ID characters).
"""
import json
import math
import socket
import time

#: The stream's name (one per vhost). Begins with `taskqueue`: no reply may go there
#: (replies.is_own).
STREAM = "taskqueue_cancels"
CONTENT_TYPE = "application/json"
#: Retention: a little over the longest delay (delays.MAX_DELAY, 12.1 days), so that a
#: cancel outlives every task it can be about that waits in the delay chain.
RETENTION = 13 * 86400
#: The stream's size cap: about 80 000 cancels with their settled records. Past it
#: RabbitMQ drops the oldest segment, and those cancels are forgotten.
MAX_BYTES = 16 * 2**20
#: A segment: the unit RabbitMQ deletes (its default, 500 MB, is above the cap).
SEGMENT_BYTES = 2 * 2**20
#: Longest id (deadletters.task_key cuts message ids there), and longest record.
MAX_ID = 200
MAX_RECORD = 4096
#: Ids a worker keeps in memory: more than the stream holds (MAX_BYTES: 80 000 took
#: about 25 MB more resident, measured); beyond, the oldest are forgotten first.
MAX_IDS = 100_000
#: The kinds of record.
CANCEL, SETTLED = "cancel", "settled"


def id_problem(task_id):
    """Why `task_id` cannot name a task (a sentence), or None when it can: a string of
    1 to MAX_ID printable characters without spaces, as task ids are."""
    if not isinstance(task_id, str):
        return f"expected a string, not {type(task_id).__name__}"
    if not 1 <= len(task_id) <= MAX_ID:
        return f"expected 1 to {MAX_ID} characters, not {len(task_id)}"
    if not all(c.isprintable() and not c.isspace() for c in task_id):
        return "expected printable characters without spaces (a message id)"
    return None


def checked_id(task_id):
    """`task_id` when it can name a task, else ValueError saying why (id_problem)."""
    problem = id_problem(task_id)
    if problem:
        shown = task_id[:60] if isinstance(task_id, str) else task_id
        raise ValueError(f"task id {shown!r:.80}: {problem}")
    return task_id


def record(kind, task_id, by, at=None, outcome=None):
    """The message body of one record: `kind` (CANCEL or SETTLED) of `task_id`, written
    by `by` (a client or child name) on this host, at `at` (None: now)."""
    out = {kind: checked_id(task_id), "at": round(time.time() if at is None else at, 3),
           "host": socket.gethostname()[:MAX_ID], "by": str(by)[:MAX_ID]}
    if outcome is not None:
        out["outcome"] = outcome
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False).encode()


def decode(body):
    """(kind, task id, at) of one message body, or None when it is no record (junk: too
    big, not JSON, not one object, no valid id, or both kinds at once)."""
    if not isinstance(body, (bytes, bytearray)) or len(body) > MAX_RECORD:
        return None
    try:
        raw = json.loads(bytes(body).decode())
    except (ValueError, RecursionError):    # UnicodeDecodeError is a ValueError
        return None
    if not isinstance(raw, dict):
        return None
    kinds = [kind for kind in (CANCEL, SETTLED) if kind in raw]
    if len(kinds) != 1 or id_problem(raw[kinds[0]]):
        return None
    at = raw.get("at")
    if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at):
        at = None
    return kinds[0], raw[kinds[0]], at


def pending(records):
    """The ids cancelled and not settled by any worker yet, oldest cancel first, from
    decoded records (decode) in the stream's order. A settled record before its cancel
    counts too: two clients may cancel a task, and a worker settles it once."""
    cancelled, settled = {}, set()
    for kind, task_id, _ in records:
        if kind == CANCEL:
            cancelled.setdefault(task_id, None)
        else:
            settled.add(task_id)
    return [task_id for task_id in cancelled if task_id not in settled]


def stream_arguments(retention=RETENTION, max_bytes=MAX_BYTES):
    """The stream's arguments: `retention` seconds, `max_bytes` at most."""
    return {"x-queue-type": "stream", "x-max-age": f"{int(retention)}s",
            "x-max-length-bytes": int(max_bytes),
            "x-stream-max-segment-size-bytes": min(SEGMENT_BYTES, int(max_bytes))}


def explain_refusal(reason):
    """Words for the broker's refusal to declare the stream."""
    return f"declaring {STREAM}: {getattr(reason, 'reply_text', reason)}"


class CancelledIds:
    """The ids a worker process knows cancelled: at most `limit`, the oldest forgotten
    first (`forgotten` counts them)."""

    def __init__(self, limit=MAX_IDS):
        self.limit = limit
        self.forgotten = 0
        self._ids = {}      # insertion-ordered: the oldest first

    def add(self, task_id):
        """Remember `task_id`; True when it is new."""
        if task_id in self._ids:
            return False
        self._ids[task_id] = None
        if len(self._ids) > self.limit:
            del self._ids[next(iter(self._ids))]
            self.forgotten += 1
        return True

    def __contains__(self, task_id):
        return task_id in self._ids

    def __len__(self):
        return len(self._ids)
