"""Periodic tasks across pools: who leads each schedule, and the record of its firings (pure).

Every pool that runs the scheduler (runtime/scheduler.py) tries to lead each schedule it
knows by declaring the schedule's lead queue (lead_queue): an exclusive queue, which
the broker gives to one connection only and deletes when that connection goes, however
it goes (a SIGKILLed host's connection too, once its heartbeat or TCP gives up). The
holder fires the schedule's slots; the others try again every LEAD_RETRY seconds.

What was fired lives in the stream STREAM, one JSON record per message, so that a new
leader (another host, or this pool restarted) knows the last slot fired and fires none
twice:
    {"schedule": NAME, "slot": SLOT_ID or null, "why": "fired"|"lead"|"held",
     "at": SECONDS, "holder": "HOST pid PID"}
`fired`: the slot's task was confirmed by the broker just before. `lead`: a pool took
the lead (slot: the last one it knows fired). `held`: the leader says again, every
HELD_EVERY seconds, which slot it fired last, so that the stream's size cap (it drops
its oldest segment) never takes a schedule's last firing with it.

Whoever may publish to the vhost may write anything into the stream: decode() bounds
and types what it takes; anything else is junk.
"""
import calendar
import json
import math
import os
import re
import socket
import time

#: The stream's name (one per vhost); begins with `taskqueue`: no reply may go there.
STREAM = "taskqueue_schedules"
CONTENT_TYPE = "application/json"
#: The stream's size cap and segment (the unit RabbitMQ deletes). 16 MiB holds more than
#: HELD_EVERY of firings of 100 schedules firing every second.
MAX_BYTES = 16 * 2**20
SEGMENT_BYTES = 1 * 2**20
#: Seconds between a standby pool's tries to take a schedule's lead.
LEAD_RETRY = 2.0
#: Seconds between a leader's `held` records of each schedule it leads.
HELD_EVERY = 300.0
#: Seconds ahead of its clock a new leader believes a slot fired (History.not_after).
FUTURE_MARGIN = 86400.0
#: Longest record and longest schedule name.
MAX_RECORD = 2048
MAX_NAME = 100
#: A schedule's name: usable in a queue name and a message id.
NAME = re.compile(r"[A-Za-z0-9_.-]{1,%d}" % MAX_NAME)
#: A slot's id: its UTC time, to the second.
SLOT_ID = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
FIRED, LEAD, HELD = "fired", "lead", "held"
WHYS = (FIRED, LEAD, HELD)
#: Prefix of every lead queue, and of every fired task's message id.
LEAD_PREFIX = "taskqueue_schedule_lead."
ID_PREFIX = "sched:"


def lead_queue(name):
    """The exclusive queue whose holder leads the schedule `name`."""
    return LEAD_PREFIX + name


def slot_id(at):
    """The id of the slot at `at` (seconds since the epoch): its UTC time, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(at)))


def message_id(name, at):
    """The message id of the task schedule `name` fires for its slot at `at`: the same on
    every pool, so that a slot fired twice (see docs) is seen as one task twice."""
    return f"{ID_PREFIX}{name}:{slot_id(at)}"


def slot_of_message_id(message_id):
    """The slot time (seconds since the epoch) a scheduled task's message id names, or
    None for another id."""
    if not isinstance(message_id, str) or not message_id.startswith(ID_PREFIX) \
            or message_id[-21:-20] != ":":
        return None
    return _slot_time(message_id[-20:])


def _slot_time(text):
    if not SLOT_ID.fullmatch(text):
        return None
    try:
        return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:      # 2026-13-45T...: the right shape, no date
        return None


def holder():
    """Who writes: this host and process."""
    return f"{socket.gethostname()[:100]} pid {os.getpid()}"


def record(name, why, slot_at=None, at=None, who=None):
    """One record's body: schedule `name`, `why` (WHYS), the slot (its time, or None)."""
    out = {"schedule": name, "slot": None if slot_at is None else slot_id(slot_at),
           "why": why, "at": round(time.time() if at is None else at, 3),
           "holder": who or holder()}
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False).encode()


def decode(body):
    """(name, why, slot time or None, at, holder) of one message body, or None for junk."""
    if not isinstance(body, (bytes, bytearray)) or len(body) > MAX_RECORD:
        return None
    try:
        raw = json.loads(bytes(body).decode())
    except (ValueError, RecursionError):
        return None
    if not isinstance(raw, dict):
        return None
    name, why, slot, at, who = (raw.get(key) for key in ("schedule", "why", "slot", "at",
                                                          "holder"))
    if not isinstance(name, str) or not NAME.fullmatch(name) or why not in WHYS:
        return None
    if slot is not None and not isinstance(slot, str):
        return None
    if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at):
        return None
    if not isinstance(who, str) or len(who) > 200 or not who.isprintable():
        who = "?"
    slot_at = None if slot is None else _slot_time(slot)
    if slot is not None and slot_at is None:
        return None
    return name, why, slot_at, float(at), who


class History:
    """What the records read so far say of each schedule: the last slot fired (the
    latest, whatever order the records came in) and the last lead taken."""

    def __init__(self, not_after=None):
        #: A slot later than this (seconds) is taken as no firing (`future` counts them):
        #: whoever may publish to the vhost could otherwise write a slot of the year 9999
        #: and stop a schedule for good. A clock stepped back further than the margin the
        #: caller gives may then fire a slot again.
        self.not_after = not_after
        self.future = 0
        self.fired = {}     # name -> slot time
        self.fired_at = {}  # name -> when it was recorded
        self.lead = {}      # name -> (holder, at)
        self.junk = 0

    def add(self, body):
        found = decode(body)
        if found is None:
            self.junk += 1
            return
        name, why, slot_at, at, who = found
        if slot_at is not None and self.not_after is not None and slot_at > self.not_after:
            self.future += 1
            return
        if slot_at is not None and slot_at >= self.fired.get(name, -math.inf):
            self.fired[name] = slot_at
            self.fired_at[name] = at
        if why == LEAD:
            self.lead[name] = (who, at)


def stream_arguments():
    return {"x-queue-type": "stream", "x-max-length-bytes": MAX_BYTES,
            "x-stream-max-segment-size-bytes": SEGMENT_BYTES}


def explain_refusal(reason):
    return f"declaring {STREAM}: {getattr(reason, 'reply_text', reason)}"
