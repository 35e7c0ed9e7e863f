"""Retrying a task later instead of failing it now: the pure decisions.

A retried task is settled (acked) and published again through the delay
chain (delays.py): it comes back to `worker_<type>` after a delay, as a new
message with the header `x-taskqueue-retries` counting its retries. It is not
a death, so it never counts toward the delivery limit, and no process holds
it while it waits. Two ways in, both bounded so that no task can loop hot:

- `channel.retry(delay=None)` in handle_task: at most `max_retries` times,
  or EXPLICIT_RETRY_CAP times when the group's `max_retries` is 0;
- handle_task raised and the group has `max_retries` left: retried after the
  group's backoff; once none are left, dead-lettered with the reason.

The count comes from a header, which a publisher may forge as well: a value
that is no count taskqueue writes (read_count) ends the task's retries, and
it is dead-lettered with a reason naming the value. No policy the config
accepts and no count makes the backoff overflow: past retry_max_delay it is
retry_max_delay.
"""
import datetime
import decimal
import math
from dataclasses import dataclass

from taskqueue.printable import printable

#: The header that counts a task's retries so far (absent: none).
RETRIES_HEADER = "x-taskqueue-retries"
#: How many times channel.retry() may put a task off when its group sets no
#: max_retries: enough for a service to come back, not a loop.
EXPLICIT_RETRY_CAP = 20
#: Jitter adds up to this fraction to a backoff delay (never removes: never early).
JITTER = 0.1
#: The largest count RETRIES_HEADER may hold: far beyond any real count (each retry
#: waits retry_delay at least), and within AMQP's 32-bit integers.
MAX_RETRY_COUNT = 2**31 - 1
#: How read_count names the kind of a value that is no count.
_KINDS = ((bool, "a boolean"), (str, "a string"), (bytes, "bytes"), (float, "a float"),
          (decimal.Decimal, "a decimal"), (datetime.datetime, "a timestamp"))


@dataclass(frozen=True)
class RetryPolicy:
    """A group's retry options ([worker] max_retries, retry_delay, retry_backoff, retry_max_delay)."""
    max_retries: int = 0
    delay: float = 1.0
    backoff: float = 2.0
    max_delay: float = 3600.0


@dataclass(frozen=True)
class Retry:
    delay: float          # seconds until the task is delivered again


@dataclass(frozen=True)
class GiveUp:
    reason: str           # why it is dead-lettered instead


def read_count(headers):
    """(the retries so far, None) from a message's RETRIES_HEADER (absent: 0), or
    (None, why) when its value is no count taskqueue writes: anything but an integer
    from 0 to MAX_RETRY_COUNT (a string, a float, a negative or huge number, a table).
    `why` is printable and short: it becomes the dead letter's reason."""
    if not headers or RETRIES_HEADER not in headers:
        return 0, None
    value = headers[RETRIES_HEADER]
    # pika decodes a 64-bit integer as a subclass of int (pika.compat.long)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_RETRY_COUNT:
        return int(value), None
    return None, (f"its {RETRIES_HEADER} header is {_describe(value)}, not a retry count "
                  f"(an integer from 0 to {MAX_RETRY_COUNT})")


def _describe(value):
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if value is None:
        return "void"
    text = repr(int(value) if isinstance(value, int) and not isinstance(value, bool) else value)
    text = printable(text if len(text) <= 40 else text[:37] + "...")
    kind = next((name for cls, name in _KINDS if isinstance(value, cls)), None)
    return f"{text} ({kind})" if kind else text


def backoff_delay(policy, retries, jitter=0.0):
    """Seconds before retry number `retries + 1`: delay × backoff^retries, capped at
    max_delay, plus up to JITTER of it (`jitter` in [0, 1)). A power beyond what a float
    holds (backoff 3 after 700 retries) is past the cap: max_delay."""
    if policy.backoff <= 1:
        base = policy.delay
    else:
        try:
            base = policy.delay * policy.backoff ** retries
        except OverflowError:
            base = math.inf
    return min(policy.max_delay, base * (1 + JITTER * jitter))


def decide(policy, retries, explicit, requested=None, error=None, jitter=0.0, problem=None):
    """Retry the task again, or give up (dead-letter it) and say why.

    `retries`: its retries so far, or None with `problem` when its header held no
    count (read_count): then it is not retried. `explicit`: the plugin called
    retry() (`requested`: the delay it asked for, None for the backoff); else
    handle_task raised `error` (its last traceback line).
    """
    if problem is not None or retries is None:
        what = "retry() asked" if explicit else f"raised {error}"
        return GiveUp(f"{what}; not retried: {problem or 'no retry count'}")
    limit = policy.max_retries if policy.max_retries or not explicit else EXPLICIT_RETRY_CAP
    if retries >= limit:
        if not explicit:
            return GiveUp(f"raised {error} after {retries} retries")
        rule = (f"max_retries {policy.max_retries}" if policy.max_retries
                else f"the cap of {EXPLICIT_RETRY_CAP} retries without max_retries")
        return GiveUp(f"retry() asked after {retries} retries: {rule} reached")
    if requested is not None:
        return Retry(float(requested))
    return Retry(backoff_delay(policy, retries, jitter))


def last_line(traceback_text, limit=200):
    """`ValueError: the message` from a formatted traceback, cut at `limit` characters."""
    lines = [line for line in (traceback_text or "").strip().splitlines() if line.strip()]
    text = lines[-1].strip() if lines else "an exception"
    return text if len(text) <= limit else text[:limit] + "..."
