"""A worker's rate gate: before a task of a rate-limited type starts, take a token from
each of its buckets (protocol/ratelimits.py): this host's (`rate_limit_per_host`), then
every host's (`rate_limit`). The task waits in the worker meanwhile, its delivery held;
the tokens are spent together once both are in hand, so a wait for one spends none of
the other. A stop or a lost connection ends the wait: the tokens held go back unspent,
the task goes back to its queue as the worker closes.

A greenlet repairs each bucket at start and every REPAIR_INTERVAL (jittered): tokens
lost (a broker node gone mid-period) come back within that interval.
"""
import logging
import random
import socket
import time

import gevent

from taskqueue.broker.ratetokens import TokenBucket
from taskqueue.errors import SessionClosed
from taskqueue.protocol import ratelimits
from taskqueue.protocol.ratelimits import Bucket

log = logging.getLogger(__name__)


class RateGate:
    """The buckets of one worker group, on the worker's session."""

    def __init__(self, session, buckets, consumer_timeout=None, processes=1):
        self._session = session
        self._tokens = [TokenBucket(session, bucket) for bucket in buckets]
        self._consumer_timeout = consumer_timeout
        self._processes = processes
        self._repairs = None
        self._warned_wait = False

    @classmethod
    def start_for(cls, group, amqp_settings, session, host=None):
        """The gate of `group`, its buckets declared and repaired once; None when the
        group has no rate limit."""
        buckets = []
        if group.rate_limit_per_host is not None:
            buckets.append(Bucket(group.worker_type, group.rate_limit_per_host,
                                  host or socket.gethostname()))
        if group.rate_limit is not None:
            buckets.append(Bucket(group.worker_type, group.rate_limit))
        if not buckets:
            return None
        gate = cls(session, buckets, amqp_settings.consumer_timeout, group.processes)
        gate.start()
        return gate

    def start(self):
        for tokens in self._tokens:
            tokens.declare()
            tokens.repair()
            warning = ratelimits.describe_wait(tokens.bucket.limit, self._processes,
                                               self._consumer_timeout or float("inf"))
            if warning:
                log.warning("%s", warning)
        log.info("rate limits: %s", "; ".join(tokens.bucket.describe() for tokens in self._tokens))
        self._repairs = gevent.spawn(self._repair_now_and_then)

    def wait_turn(self, stopping):
        """Block until this task may start (True: the tokens are spent), or `stopping` is
        set or the session closed (False: nothing spent)."""
        started = time.monotonic()
        held = []
        for tokens in self._tokens:
            try:
                tag = tokens.take(stopping)
            except SessionClosed:
                tag = None   # the connection went: the worker's loop sees it and starts over
            if tag is None:
                for owner, owned in held:
                    owner.give_back(owned)
                return False
            held.append((tokens, tag))
        for owner, owned in held:
            owner.spend(owned)
        # In the kernel's buffer before the task may crash the process: a spend the broker
        # never saw would give the token back unspent, and the start would not count.
        self._session.flush()
        self._note_wait(time.monotonic() - started)
        return True

    def _note_wait(self, seconds):
        if self._consumer_timeout and seconds > self._consumer_timeout / 2 \
                and not self._warned_wait:
            self._warned_wait = True
            log.warning("a task waited %.0f s for its rate-limit turn, more than half the "
                        "broker's consumer timeout (%g s): past it the broker takes the task "
                        "back; run fewer processes of this type", seconds,
                        self._consumer_timeout)

    def close(self):
        if self._repairs is not None:
            self._repairs.kill(block=False)

    def _repair_now_and_then(self):
        while True:
            gevent.sleep(ratelimits.REPAIR_INTERVAL * random.uniform(0.5, 1.5))
            for tokens in self._tokens:
                try:
                    tokens.repair()
                except SessionClosed:
                    return   # the worker sees it too and starts over
                except Exception:   # a repair is retried at the next interval
                    log.exception("rate limit %s: repair failed", tokens.bucket.describe())
