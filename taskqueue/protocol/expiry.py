"""Task expiry: a deadline a task carries, checked where it is dequeued. Pure.

`Client.submit(..., expires=SECONDS)` writes the deadline, now + SECONDS, into
the header EXPIRES_HEADER (Unix time in milliseconds, an integer). A worker
that receives the task after its deadline does not run it: it settles it as
`expired` (worker.py: acked, an `expired` event, a failure reply to whoever
waits). The deadline is absolute, so it holds through every hop: the delay
chain, a retry, a give-back, the dispatcher.

Not AMQP's `expiration` property: RabbitMQ starts its clock again in each queue
a message enters, and in a queue of the delay chain (protocol/delays.py) it
would dead-letter the task early, into `taskqueue`, ahead of its delay.
"""
import math
import time

#: The header: when the task expires, Unix time in milliseconds.
EXPIRES_HEADER = "x-taskqueue-expires"
#: Its values: what inbound.refusal accepts (an integer in this range).
HIGHEST = 2**63 - 1
#: The longest `expires` a client may ask for, in seconds: ten years (a larger
#: number is a mistake, not a wish for a task that never expires: pass None).
MAX_SECONDS = 10 * 366 * 86400


def checked_seconds(seconds, delay=None):
    """`seconds` when it is an `expires` a task may carry, else ValueError saying why:
    a number of seconds > 0, at most MAX_SECONDS; with a `delay`, longer than it (a
    task due after its deadline would never run)."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise ValueError(f"expires {seconds!r:.60}: expected a number of seconds")
    if math.isnan(seconds) or not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"expires {seconds!r}: expected a number of seconds above 0 and at "
                         f"most {MAX_SECONDS} (ten years)")
    if delay is not None and seconds <= delay:
        raise ValueError(f"expires {seconds:g} s is not after delay {delay:g} s: the task "
                         f"would expire before it is due")
    return seconds


def deadline(seconds, now=None):
    """The EXPIRES_HEADER value of a task submitted now that expires in `seconds`."""
    return int(round(((time.time() if now is None else now) + seconds) * 1000))


def expired_by(headers, now=None):
    """How long ago (seconds, > 0) the task with `headers` expired, or None when it has
    no deadline or has not reached it. The header's value was checked as the task came
    in (inbound.refusal): an integer."""
    value = (headers or {}).get(EXPIRES_HEADER)
    if value is None or isinstance(value, bool) or not isinstance(value, int):
        return None
    late = (time.time() if now is None else now) - value / 1000
    return late if late >= 0 else None


def reason(late):
    """What the `expired` event, the failure reply and the log say."""
    return f"expired {late:.3f}s before it could start"
