"""Rate limits from circulating tokens: N messages, the broker's TTL and dead-lettering.

A limit of N starts per period (`rate_limit: 5/s`) is a bucket of two queues: the
token queue T and the wait queue W. N token messages circulate between them. A
worker about to start a task takes a token from T and rejects it without requeue:
T dead-letters it into W, where it stays one period (W's x-message-ttl) before W
dead-letters it back into T. A token is spent at most once per period, so any
window of one period holds at most N starts, on every host together; no process
mints tokens or keeps time, and a worker that dies holding a token (taken, not yet
rejected) gives it back unspent. W's message count is the number of starts in the
last period: the current rate (`taskqueue status`).

Extra tokens (forged by a publisher, or added by a repair that miscounted) are
taken out where they would matter: a worker holding a token while W already holds
N spent ones holds an extra one (with exactly N tokens, holding one leaves at most
N - 1 in W) and drops it instead of starting (`is_extra`). Missing tokens (lost
when a quorum queue's leader moved: at-most-once dead-lettering loses rather than
duplicates) are added back by `tokens_to_add`, under a lock, from a few counts.

The queue names carry the limit (`taskqueue.rate.5s.<type>.tokens`): changing
`5/s` to `10/s` or `/s` to `/m` makes a new bucket (a wait queue's TTL cannot
change), and the old one, unused, expires (QUEUE_EXPIRES). No name can be a
worker queue's (`worker_...`) or another type's: the limit comes first, the type
after it, and a type holds no '@' (routing.TYPE_PATTERN), which a host's bucket
adds. Pure: no pika, no I/O; broker/ratetokens.py does the broker's part,
runtime/rategate.py the worker's.
"""
import hashlib
import re
from dataclasses import dataclass
from typing import Optional

from taskqueue.protocol import topology

#: Seconds per unit of a limit.
UNITS = {"s": 1, "m": 60, "h": 3600}
#: The most tokens of one bucket: each is a message of two queues, moved twice a start.
MAX_COUNT = 10000
RULE = (f"N/s, N/m or N/h, N a whole number from 1 to {MAX_COUNT} "
        "(5/s: at most 5 task starts a second)")
_LIMIT = re.compile(r"\s*([0-9]+)\s*/\s*([smh])\s*", re.IGNORECASE)

#: Every bucket's queues begin with this (no worker queue does: worker_<type>).
PREFIX = "taskqueue.rate."
TOKEN_SUFFIX, WAIT_SUFFIX, LOCK_SUFFIX = ".tokens", ".wait", ".lock"
_SUFFIXES = (TOKEN_SUFFIX, WAIT_SUFFIX, LOCK_SUFFIX)
#: AMQP's longest queue name, in bytes.
MAX_NAME = 255
#: A bucket nobody declared or took from for this long is deleted by the broker
#: (x-expires): what a changed limit leaves behind goes by itself. Workers declare
#: both queues at start and at each repair, which keeps a used bucket.
QUEUE_EXPIRES = 7 * 86400 * 1000
#: A token's body; anything else found in a token queue is dropped, not counted.
TOKEN_BODY = b"taskqueue rate token"
#: Seconds between two repairs by one worker (at most one repairs at a time).
REPAIR_INTERVAL = 30.0
#: Counts of a bucket's tokens a repair takes, and the seconds between them.
REPAIR_COUNTS, REPAIR_SPACING = 3, 0.05


@dataclass(frozen=True)
class RateLimit:
    """At most `count` starts in any window of `period` seconds."""
    count: int
    unit: str

    @property
    def period(self):
        return UNITS[self.unit]

    def __str__(self):
        return f"{self.count}/{self.unit}"


def parse_rate_limit(value):
    """`5/s`, `100/m`, `2/h` -> RateLimit; ValueError saying what was expected."""
    match = _LIMIT.fullmatch(value) if isinstance(value, str) else None
    count = int(match.group(1)) if match and match.group(1).isascii() else 0
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"expected {RULE}")
    return RateLimit(count, match.group(2).lower())


@dataclass(frozen=True)
class Bucket:
    """The queues of one limit: of a type on every host (host None), or on one host."""
    worker_type: str
    limit: RateLimit
    host: Optional[str] = None

    @property
    def scope(self):
        return self.worker_type if self.host is None else f"{self.worker_type}@{self.host}"

    @property
    def token_queue(self):
        return self._name(TOKEN_SUFFIX)

    @property
    def wait_queue(self):
        return self._name(WAIT_SUFFIX)

    @property
    def lock_queue(self):
        return self._name(LOCK_SUFFIX)

    def _name(self, suffix):
        head = f"{PREFIX}{self.limit.count}{self.limit.unit}."
        name = head + self.scope + suffix
        if len(name.encode()) <= MAX_NAME:
            return name
        # A long type (up to 200 characters) and host: the scope's digest, still one per scope.
        # ('~' is in no type.) The same stem for all three queues: they read as one bucket.
        digest = hashlib.sha256(self.scope.encode()).hexdigest()[:32]
        keep = MAX_NAME - len(head.encode()) - 1 - len(digest) - max(map(len, _SUFFIXES))
        return (head + self.scope.encode()[:keep].decode("utf-8", "ignore") + "~" + digest
                + suffix)

    def describe(self):
        where = "across all hosts" if self.host is None else f"on host {self.host}"
        return f"{self.worker_type} {self.limit} {where}"


def _quorum(arguments, settings):
    if settings.queue_type == "quorum":
        arguments.update({"x-queue-type": "quorum", topology.LEADER_LOCATOR: "balanced",
                          # A token handed back many times (a worker stopping while it held
                          # one) must not be dropped, as taskqueue_dead's letters must not.
                          "x-delivery-limit": topology.DEAD_QUEUE_DELIVERY_LIMIT,
                          # A token lost on a failover lowers the rate until a repair; a
                          # duplicated one (at-least-once) would raise it.
                          "x-dead-letter-strategy": "at-most-once"})
    return arguments


def token_arguments(bucket, settings):
    """T's arguments: a rejected (spent) token goes to W; at most N wait in it (a forged
    flood is refused, and a token coming back to a full T is dropped: it was extra)."""
    return _quorum({"x-dead-letter-exchange": "", "x-dead-letter-routing-key": bucket.wait_queue,
                    "x-max-length": bucket.limit.count, "x-overflow": "reject-publish",
                    "x-expires": QUEUE_EXPIRES}, settings)


def wait_ms(limit):
    """How long a spent token waits in W: a period, and a margin of a tenth of it (at most
    a second). A token is spent just before its task starts; the start as the plugin
    sees it comes a few ms later, tens on a loaded host (a first task, say), and without
    the margin tokens spent back to back a period apart could show as two periods' starts
    within one. The limit is kept by the starts as anyone measures them, a little below N."""
    return limit.period * 1000 + min(limit.period * 100, 1000)


def wait_arguments(bucket, settings):
    """W's arguments: a spent token waits one period (and wait_ms's margin), then goes
    back to T."""
    return _quorum({"x-message-ttl": wait_ms(bucket.limit),
                    "x-dead-letter-exchange": "", "x-dead-letter-routing-key": bucket.token_queue,
                    "x-max-length": bucket.limit.count, "x-overflow": "reject-publish",
                    "x-expires": QUEUE_EXPIRES}, settings)


def is_token(body):
    """Whether a message of a token queue is a token (anything else is dropped unspent)."""
    return body == TOKEN_BODY


def is_extra(spent, limit):
    """Whether a token in hand is one too many: `spent` (W's count) tokens were spent
    in the last period already, and with `limit.count` tokens in all, holding one
    leaves at most count - 1 there."""
    return spent >= limit.count


def tokens_to_add(limit, counts):
    """How many tokens a repair adds, from `counts` of T's and W's messages together,
    taken a few times apart: a token moving between the two queues may be missed or
    counted twice by one count. Only when every count is below the limit, and then
    what the highest misses. (Extras are not removed here: is_extra drops them.)"""
    counts = list(counts)
    if not counts or any(count >= limit.count for count in counts):
        return 0
    return limit.count - max(counts)


def describe_wait(limit, processes, consumer_timeout):
    """A warning when a task may wait for its token longer than the broker lets a
    delivery go unacked (consumer_timeout): `processes` waiting in turn, one token
    each per period/count seconds. None when it is fine."""
    worst = processes * limit.period / limit.count
    if worst < consumer_timeout / 2:
        return None
    return (f"rate_limit {limit} with {processes} processes: a task may wait about "
            f"{worst:g} s for its turn, holding its delivery, and past the broker's "
            f"consumer timeout ({consumer_timeout:g} s) the broker closes the channel and "
            f"delivers it again; run fewer processes of this type (more than the limit "
            f"lets start in a period is no faster)")
