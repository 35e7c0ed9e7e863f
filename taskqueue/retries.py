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
"""
from dataclasses import dataclass

#: The header that counts a task's retries so far (absent: none).
RETRIES_HEADER = "x-taskqueue-retries"
#: How many times channel.retry() may put a task off when its group sets no
#: max_retries: enough for a service to come back, not a loop.
EXPLICIT_RETRY_CAP = 20
#: Jitter adds up to this fraction to a backoff delay (never removes: never early).
JITTER = 0.1


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


def retries_so_far(headers):
    """The count in a message's RETRIES_HEADER; 0 when absent or not a count."""
    value = (headers or {}).get(RETRIES_HEADER, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def backoff_delay(policy, retries, jitter=0.0):
    """Seconds before retry number `retries + 1`: delay × backoff^retries, capped at
    max_delay, plus up to JITTER of it (`jitter` in [0, 1))."""
    base = policy.delay * policy.backoff ** min(retries, 1000) if policy.backoff > 1 else policy.delay
    return min(policy.max_delay, base * (1 + JITTER * jitter))


def decide(policy, retries, explicit, requested=None, error=None, jitter=0.0):
    """Retry the task again, or give up (dead-letter it) and say why.

    `retries`: its retries so far; `explicit`: the plugin called retry()
    (`requested`: the delay it asked for, None for the backoff); else
    handle_task raised `error` (its last traceback line).
    """
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
