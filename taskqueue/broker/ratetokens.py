"""A rate limit's tokens on the broker (protocol/ratelimits.py says how they circulate):
declare a bucket's queues, take a token, spend it or give it back, repair the count.

On a channel of its own on the worker's Session, so that a refusal (a bucket's queue
deleted under it: 404) closes none of the worker's channels. A token is taken by
consuming the token queue with prefetch 1 only while the worker waits for one: a
token returned from the wait queue goes at once to a waiting worker, no one polls,
and none is held by a worker that has nothing to start.
"""
import logging

import gevent
from gevent.event import AsyncResult, Event
import pika

from taskqueue.broker.pikaparams import REPLY_TIMEOUT
from taskqueue.errors import PublishNacked, SessionClosed
from taskqueue.protocol import plans, ratelimits

log = logging.getLogger(__name__)

#: The broker's answer to a declare of an exclusive queue another connection holds.
RESOURCE_LOCKED = 405
#: Seconds before trying again after the broker closed the bucket's channel.
REOPEN_PAUSE = 1.0


class ChannelGone(Exception):
    """The bucket's channel closed (the broker refused something on it)."""


class TokenBucket:
    """One bucket's tokens, as one worker process uses them."""

    def __init__(self, session, bucket):
        self.session = session
        self.bucket = bucket
        self._channel = None
        self._closed = None           # AsyncResult: set with the reason once the channel closes
        self._cancelled = Event()     # the broker cancelled our consumer (a queue leader moved)
        self.junk_seen = 0            # messages of the token queue that were no token

    # -- declaring ------------------------------------------------------------------

    def declare(self):
        """Declare both queues, as every worker of the bucket does (it keeps x-expires
        from deleting a bucket in use); TopologyError naming the queue if it exists
        with other arguments ([amqp] queue_type changed, say)."""
        settings, bucket = self.session.settings, self.bucket
        self.session.declare_plan([
            plans.queue(bucket.token_queue, ratelimits.token_arguments(bucket, settings),
                        lambda reason: self._refusal(bucket.token_queue, reason)),
            plans.queue(bucket.wait_queue, ratelimits.wait_arguments(bucket, settings),
                        lambda reason: self._refusal(bucket.wait_queue, reason))])

    def _refusal(self, queue, reason):
        text = getattr(reason, "reply_text", None) or repr(reason)
        return (f"rate limit {self.bucket.describe()}: queue {queue!r} cannot be declared "
                f"({text}); delete {self.bucket.token_queue} and {self.bucket.wait_queue} "
                "(rabbitmqctl delete_queue): they hold only tokens, and taskqueue makes "
                "them anew")

    # -- taking a token ----------------------------------------------------------------

    def take(self, stopping):
        """Wait for a token that is no extra one (ratelimits.is_extra) and hold it: its
        delivery tag, to spend() or give_back(); None once `stopping` is set or the
        session closed. Junk in the token queue is dropped unspent."""
        while not stopping.is_set() and self.session.is_open:
            try:
                tag = self._take_one(stopping)
            except ChannelGone as exc:
                log.warning("rate limit %s: %s; opening another channel",
                            self.bucket.describe(), exc)
                self._channel = None
                gevent.wait([stopping, self.session.closed], count=1, timeout=REOPEN_PAUSE)
                if self.session.is_open:
                    self.declare()    # a queue deleted under us (404) comes back
                continue
            if tag is not None:
                return tag
        return None

    def _take_one(self, stopping):
        """One token's delivery tag; None when woken with nothing (stop, close, cancel),
        or the token was dropped."""
        channel = self._open()
        delivery = self._next_delivery(channel, stopping)
        if delivery is None:
            return None
        method, body = delivery
        if not ratelimits.is_token(body):
            self.junk_seen += 1
            if self.junk_seen in (1, 10, 100) or self.junk_seen % 1000 == 0:
                log.warning("rate limit %s: %d message(s) in %s that are no token dropped "
                            "(someone publishes into it)", self.bucket.describe(),
                            self.junk_seen, self.bucket.token_queue)
            channel.basic_ack(method.delivery_tag)
            return None
        spent = self._count(channel, self.bucket.wait_queue)
        if ratelimits.is_extra(spent, self.bucket.limit):
            log.info("rate limit %s: a token too many (%d spent in the last period already); "
                     "dropped", self.bucket.describe(), spent)
            channel.basic_ack(method.delivery_tag)
            return None
        return method.delivery_tag

    def _next_delivery(self, channel, stopping):
        """Consume the token queue until one message comes; (method, body) or None."""
        got = AsyncResult()
        self._cancelled.clear()
        tag = self._call(channel, channel.basic_consume, self.bucket.token_queue,
                         lambda ch, method, props, body: got.set((method, body)),
                         want_frame=False)
        gevent.wait([got, stopping, self.session.closed, self._closed, self._cancelled],
                    count=1)
        if self._closed.ready() or not self.session.is_open:
            raise ChannelGone(self._closed.get() if self._closed.ready() else "session closed")
        if not self._cancelled.is_set():
            self._call(channel, channel.basic_cancel, tag)
        if got.ready() and (stopping.is_set() or not self.session.is_open):
            self.give_back(got.get()[0].delivery_tag)   # prefetch 1: no other came
            return None
        return got.get() if got.ready() else None

    def spend(self, tag):
        """Reject the token: the token queue dead-letters it into the wait queue, where it
        stays a period. Sent at once; pika writes it on the hub's next turn."""
        if self._channel is not None and self._channel.is_open:
            self._channel.basic_reject(tag, requeue=False)

    def give_back(self, tag):
        """Return a token unspent (a stop while it was held)."""
        if self._channel is not None and self._channel.is_open:
            self._channel.basic_reject(tag, requeue=True)

    # -- repairing -------------------------------------------------------------------

    def repair(self):
        """Count the tokens under the bucket's lock and add those missing
        (ratelimits.tokens_to_add); return how many were added, None when another
        process holds the lock or the broker closed the channel (said in a warning: the
        next repair tries again). Declares both queues first (a deleted one comes back)."""
        try:
            return self._repair()
        except ChannelGone as exc:
            log.warning("rate limit %s: repair: %s; tried again later", self.bucket.describe(),
                        exc)
            return None

    def _repair(self):
        self.declare()
        channel = self.session.open_channel()
        closed = AsyncResult()
        channel.add_on_close_callback(lambda ch, reason: closed.ready() or closed.set(reason))
        try:
            try:
                self._call(channel, channel.queue_declare, self.bucket.lock_queue,
                           exclusive=True, auto_delete=True, closed=closed)
            except ChannelGone:
                if getattr(closed.get(), "reply_code", None) == RESOURCE_LOCKED:
                    return None
                raise
            counts = []
            for index in range(ratelimits.REPAIR_COUNTS):
                if index:
                    gevent.sleep(ratelimits.REPAIR_SPACING)
                counts.append(sum(self._count(channel, queue, closed) for queue in
                                  (self.bucket.token_queue, self.bucket.wait_queue)))
            missing = ratelimits.tokens_to_add(self.bucket.limit, counts)
            added = self._add(missing)
            if added:
                log.info("rate limit %s: %d token(s) added (counted %s of %d)",
                         self.bucket.describe(), added, "/".join(map(str, counts)),
                         self.bucket.limit.count)
            self._call(channel, channel.queue_delete, self.bucket.lock_queue, closed=closed)
            return added
        finally:
            if channel.is_open:
                channel.close()

    def _add(self, missing):
        props = pika.BasicProperties(delivery_mode=2, content_type="text/plain")
        for added in range(missing):
            try:
                self.session.publish_confirmed(self.bucket.token_queue, ratelimits.TOKEN_BODY,
                                               props)
            except PublishNacked:   # the token queue is full (x-max-length): enough there
                return added
        return missing

    # -- channel plumbing ------------------------------------------------------------

    def _open(self):
        if self._channel is None or not self._channel.is_open:
            channel = self.session.open_channel()
            self._closed = AsyncResult()
            channel.add_on_close_callback(
                lambda ch, reason, closed=self._closed: closed.ready() or closed.set(reason))
            channel.add_on_cancel_callback(lambda frame: self._cancelled.set())
            self._call(channel, channel.basic_qos, prefetch_count=1)
            self._channel = channel
        return self._channel

    def _count(self, channel, queue, closed=None):
        frame = self._call(channel, channel.queue_declare, queue, passive=True, closed=closed)
        return frame.method.message_count

    def _call(self, channel, method, *args, closed=None, want_frame=True, **kwargs):
        """Call a pika method with a reply and wait for it; ChannelGone when the channel
        closes meanwhile, SessionClosed when the session does. Returns the reply frame,
        or (want_frame False) what the method returned (basic_consume: its tag)."""
        closed = closed if closed is not None else self._closed
        reply = AsyncResult()
        returned = method(*args, callback=reply.set, **kwargs)
        gevent.wait([reply, closed, self.session.closed], count=1, timeout=REPLY_TIMEOUT)
        if reply.ready():
            return reply.get() if want_frame else returned
        if self.session.closed.is_set():
            raise SessionClosed(f"rate limit {self.bucket.describe()}: session closed: "
                                f"{self.session.close_reason!r}")
        if closed.ready():
            raise ChannelGone(f"the broker closed its channel: {closed.get()!r}")
        raise SessionClosed(f"rate limit {self.bucket.describe()}: no reply in "
                            f"{REPLY_TIMEOUT:g}s")
