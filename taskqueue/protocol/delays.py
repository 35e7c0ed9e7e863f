"""Delayed delivery from the broker's own TTL and dead-lettering: no plugin, no process.

A delay of `seconds` (rounded up: never early) is written in binary, one bit
per level. Level i is the queue `taskqueue.delay.<i>`, whose messages expire
after 2^i s and are then dead-lettered, routing key kept, to the exchange of
level i-1. The exchange of level i, `taskqueue.delay.x<i>` (topic), reads the
routing key's word for level i: "1" sends the message into the queue of level
i (it waits 2^i s), "0" passes it on to the exchange of level i-1 at once
(an exchange-to-exchange binding). Below level 0 is the fanout exchange
`taskqueue.delay.deliver`, bound to `taskqueue`: the dispatcher routes the
message there by its `worker_type` header, as any other. The waits on the
path add up to the delay exactly; the broker adds what it takes to notice
an expiry (measured: ~10 ms a level on RabbitMQ 3.10 and 4.0.5).

Celery 5.5 ("native delayed delivery", kombu) builds the same from 28
levels; 20 are enough here: 2^20 - 1 s is 12 days.

Every queue of a level holds messages of one TTL only, so they expire in
the order they came: a queue's head is always the next to go. The levels are
queues of `[amqp] queue_type` (quorum by default): measured on RabbitMQ 3.10.8
and 4.0.5, a quorum queue with no consumer dead-letters an expired message
within ~15 ms of its TTL, as a classic one does; quorum levels dead-letter at
least once (the message leaves a level only once the next hop took it), so a
broker restart or a full disk in the middle of a hop loses nothing.

This module is pure: it plans (`route`) and lists what to declare
(`declarations`); plans.py makes a plan of it, broker/declarations.py runs it.
"""
import math
import time
from dataclasses import dataclass

#: How many levels: the longest delay is 2^LEVELS - 1 seconds (12 days).
LEVELS = 20
#: The longest delay, in seconds.
MAX_DELAY = 2**LEVELS - 1
#: Names of the queue and the exchange of a level, and of the end of the chain.
QUEUE_PREFIX = "taskqueue.delay."
EXCHANGE_PREFIX = "taskqueue.delay.x"
DELIVER_EXCHANGE = "taskqueue.delay.deliver"
#: Header set at publish: when the task is due, in epoch seconds. It marks a
#: message that came through the chain (the dispatcher drops the chain's x-death).
DELAYED_HEADER = "x-taskqueue-delayed-until"


def level_queue(level):
    return f"{QUEUE_PREFIX}{level}"


def level_exchange(level):
    """The exchange of `level`; below level 0, the end of the chain."""
    return f"{EXCHANGE_PREFIX}{level}" if level >= 0 else DELIVER_EXCHANGE


LEVEL_QUEUES = tuple(level_queue(level) for level in range(LEVELS))


def whole_seconds(seconds):
    """`seconds` rounded up to whole seconds; ValueError with a sentence when it is no
    delay taskqueue can give (negative, not a number, longer than MAX_DELAY)."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise ValueError(f"delay {seconds!r} is not a number of seconds")
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"delay {seconds!r}: expected a number of seconds >= 0")
    if seconds > MAX_DELAY:
        raise ValueError(f"delay {seconds!r} s is too long: at most {MAX_DELAY} s "
                         f"({MAX_DELAY / 86400:.1f} days)")
    return math.ceil(seconds)


def route(seconds):
    """(exchange, routing_key) to publish a message to so that it reaches `taskqueue`
    after `seconds` (rounded up), never before; ValueError for a delay out of range.

    The routing key has one word per level, level LEVELS-1 first: "1" where the
    message waits in that level's queue. It goes in at its highest "1" level
    (the exchanges above would only pass it on); a delay of 0 goes to the end."""
    delay = whole_seconds(seconds)
    if delay == 0:
        return DELIVER_EXCHANGE, ""
    key = ".".join("1" if delay >> level & 1 else "0" for level in reversed(range(LEVELS)))
    return level_exchange(delay.bit_length() - 1), key


def first_queue(seconds, task_queue="taskqueue"):
    """The queue a message delayed `seconds` (as route() sends it) enters first, the
    one whose overflow would refuse it: the level of its highest bit, or `task_queue`
    when there is no delay."""
    delay = whole_seconds(seconds)
    return level_queue(delay.bit_length() - 1) if delay else task_queue


def due(seconds, now=None):
    """The DELAYED_HEADER value of a message published now with this delay."""
    return int(math.ceil((time.time() if now is None else now) + whole_seconds(seconds)))


def _pattern(level, bit):
    """The topic pattern that matches the routing keys whose word for `level` is `bit`."""
    words = ["*"] * LEVELS
    words[LEVELS - 1 - level] = bit
    return ".".join(words)


@dataclass(frozen=True)
class Declarations:
    """What the chain is made of, in the order to declare it."""
    exchanges: tuple           # (name, type)
    queues: tuple              # (name, arguments)
    queue_bindings: tuple      # (queue, exchange, routing pattern)
    exchange_bindings: tuple   # (destination exchange, source exchange, routing pattern)


def level_arguments(level, settings):
    """The arguments of the queue of `level`: its TTL, where it dead-letters to, and
    (quorum) at-least-once dead-lettering, which requires reject-publish overflow."""
    args = {"x-message-ttl": 2**level * 1000,
            "x-dead-letter-exchange": level_exchange(level - 1)}
    if settings.queue_type == "quorum":
        args.update({"x-queue-type": "quorum",
                     "x-dead-letter-strategy": "at-least-once",
                     "x-overflow": "reject-publish"})
    return args


def declarations(settings, task_queue="taskqueue", task_queue_arguments=None):
    """Everything the chain needs, for an AmqpSettings. `task_queue` is where it ends,
    declared with `task_queue_arguments` (topology.queue_arguments: as everyone declares it)."""
    exchanges = [(level_exchange(level), "topic") for level in range(LEVELS)]
    exchanges.append((DELIVER_EXCHANGE, "fanout"))
    queues = [(level_queue(level), level_arguments(level, settings)) for level in range(LEVELS)]
    queues.append((task_queue, dict(task_queue_arguments or {})))
    queue_bindings = [(level_queue(level), level_exchange(level), _pattern(level, "1"))
                      for level in range(LEVELS)]
    queue_bindings.append((task_queue, DELIVER_EXCHANGE, ""))
    exchange_bindings = [(level_exchange(level - 1), level_exchange(level), _pattern(level, "0"))
                         for level in range(LEVELS)]
    return Declarations(tuple(exchanges), tuple(queues), tuple(queue_bindings),
                        tuple(exchange_bindings))


# -- what the chain leaves on a message ---------------------------------------------

#: Headers the broker sets when it dead-letters a message.
DEATH_HEADER = "x-death"
FIRST_DEATH = "x-first-death-"
LAST_DEATH = "x-last-death-"
DEATH_FIELDS = ("queue", "reason", "exchange")


def without_chain_deaths(headers):
    """`headers` of a message that came through the chain (it has DELAYED_HEADER),
    without the deaths the chain's expiries added: their x-death entries, and the
    x-first-death-* / x-last-death-* headers that name a level queue (the last is set
    again from the newest death left, one from before the delay). Other headers, and
    a message that did not come through the chain, are kept as they are."""
    if not headers or DELAYED_HEADER not in headers:
        return headers
    out = dict(headers)
    deaths = out.get(DEATH_HEADER)
    if not isinstance(deaths, list):    # none, or a publisher's odd one: not the chain's
        deaths = []
    else:
        deaths = [death for death in out.pop(DEATH_HEADER)
                  if not _names_a_level(death.get("queue") if isinstance(death, dict) else None)]
        if deaths:
            out[DEATH_HEADER] = deaths
    for prefix in (FIRST_DEATH, LAST_DEATH):
        if _names_a_level(out.get(prefix + "queue")):
            for field in DEATH_FIELDS:
                out.pop(prefix + field, None)
    if LAST_DEATH + "queue" not in out and deaths and isinstance(deaths[0], dict):   # newest first
        for field in DEATH_FIELDS:
            if field in deaths[0]:
                out[LAST_DEATH + field] = deaths[0][field]
    return out


def _names_a_level(queue):
    if isinstance(queue, bytes):
        queue = queue.decode("utf-8", "replace")
    return isinstance(queue, str) and queue in LEVEL_QUEUES
