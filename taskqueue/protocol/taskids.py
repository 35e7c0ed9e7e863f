"""Task ids that say when they were made (pure).

A task id is 32 hex digits, as uuid4().hex was; taskqueue's clients now make
them as UUID version 7 (RFC 9562): the first 48 bits are the time in
milliseconds, the rest random (74 bits: no two clients collide). The time lets
`taskqueue task ID` start reading the events stream where the task's life
began instead of at its start. A scheduled task's id (sched:NAME:SLOT, firings.py)
says its slot's time. An id made otherwise (uuid4, or any message id an
application sets) has no time: issued_at() says None, and the reader falls
back on how far back it is told to look.
"""
import os
import re
import time

from taskqueue.protocol import firings

_HEX32 = re.compile(r"[0-9a-f]{32}")


def new_id(now=None):
    """A UUIDv7 as 32 lowercase hex digits."""
    millis = int((time.time() if now is None else now) * 1000) & (2**48 - 1)
    rand = int.from_bytes(os.urandom(10), "big")
    rand_a = rand >> 68                  # 12 bits
    rand_b = rand & (2**62 - 1)          # 62 bits
    value = (millis << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    return f"{value:032x}"


def issued_at(task_id):
    """The time (seconds since the epoch) a UUIDv7 id was made, or a scheduled task's slot,
    or None for another id."""
    slot = firings.slot_of_message_id(task_id)
    if slot is not None:        # a scheduled task's id: made at its slot
        return slot
    text = task_id.replace("-", "").lower() if isinstance(task_id, str) else ""
    if not _HEX32.fullmatch(text) or text[12] != "7" or text[16] not in "89ab":
        return None
    return int(text[:12], 16) / 1000
