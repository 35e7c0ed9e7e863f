"""A worker's consumer: how many deliveries it holds, and when it gives one back.

With one delivery in hand (prefetch 1) a worker asks the broker for the next
task only by acking the current one, and waits a round trip for it: on
quorum queues about a millisecond, as long as a short task itself. With a
second delivery already in hand (lookahead) that wait disappears, but a task
held behind a long one waits for it while other workers may be idle
(celery/celery#2788: Celery's prefetch made tasks wait behind a long one).

So the intake takes the next tasks in advance (AHEAD_PREFETCH - 1 of them)
only while tasks are short:
once the task in hand has run `lookahead` seconds, it stops consuming and
gives back what it holds in advance (basic.nack with requeue: the broker
delivers it to a free worker), then holds one task at a time until a task
finishes within `lookahead` again. A group with an explicit `prefetch` above
1 gets exactly that prefetch, and no giving back.

A given-back task arrives elsewhere with `redelivered` set (it was
delivered, though never started), and on quorum queues its x-delivery-count
grows by one, which counts toward the broker's backstop limit
(topology.queue_arguments); holding one task at a time after each give-back
keeps that to the rare task that lands behind a long one after a short one.
"""
import logging

from gevent.queue import Queue

from taskqueue.errors import SessionClosed

log = logging.getLogger(__name__)

SINGLE, AHEAD, PAUSED = "single", "ahead", "paused"

#: The prefetch while tasks are short: the task in hand and 3 in advance. One in
#: advance (prefetch 2) left a quorum queue's worker waiting on the broker's
#: commit round trip between short tasks: bench/README.md measured one-hop
#: quorum e2e at 1 000-2 000 tasks/s with 2, 2 900-3 600 with 4, 3 700 with 8.
#: More held means more to give back when a task turns long (each given-back
#: task's delivery count grows by one), so no deeper than the gain.
AHEAD_PREFETCH = 4


class Intake:
    """Deliveries of `queue` as (method, properties, body) in `inbox`; None wakes the reader."""

    def __init__(self, session, queue, prefetch, lookahead):
        self.inbox = Queue()
        self._session = session
        self._queue = queue
        self._prefetch = prefetch
        # Seconds a task may run before what is held in advance goes back (None: never).
        self.lookahead = lookahead if prefetch == 1 and lookahead else None
        self._state = None
        self._tag = None

    def start(self):
        """Start consuming; returns the prefetch in use."""
        if self.lookahead is None:
            self._consume(self._prefetch, SINGLE)
        else:
            self._consume(AHEAD_PREFETCH, AHEAD)
        return AHEAD_PREFETCH if self._state is AHEAD else self._prefetch

    def wake(self):
        self.inbox.put(None)

    @property
    def holds_ahead(self):
        """True while the task in hand may have another one waiting behind it."""
        return self._state is AHEAD

    def task_is_long(self):
        """The task in hand has run `lookahead` seconds: give back what waits behind it."""
        if self._state is not AHEAD:
            return
        if not self._session.is_open:
            # The broker requeues everything anyway. (cancel() does nothing on a closed
            # session, and a nack would raise pika's ChannelWrongStateError.)
            return
        try:
            self._session.cancel(self._tag)
            self._state = PAUSED
            # Every delivery to the cancelled consumer came before its cancel-ok.
            held = [self.inbox.get_nowait() for _ in range(self.inbox.qsize())]
            given = [delivery for delivery in held if delivery is not None]
            if len(given) < len(held):   # a stop or close request: keep it
                self.inbox.put(None)
            for method, _, _ in given:
                self._session.nack(method.delivery_tag, requeue=True)
        except SessionClosed:
            return  # the connection went: the broker requeues everything anyway
        if given:
            log.debug("task in hand past lookahead %gs: gave back %d held in advance",
                      self.lookahead, len(given))

    def task_done(self, seconds):
        """After each task: resume consuming after a give-back, one at a time until
        a task is short again; then take the next one in advance again."""
        if self.lookahead is None:
            return
        try:
            if self._state is PAUSED:
                self._consume(1, SINGLE)
            elif self._state is SINGLE and seconds < self.lookahead:
                self._session.cancel(self._tag)   # what it delivered meanwhile stays in the inbox
                self._consume(AHEAD_PREFETCH, AHEAD)
        except SessionClosed:
            pass  # the worker's loop sees the session closed and exits for a restart

    def _consume(self, prefetch, state):
        # basic.qos applies to consumers started after it on the channel.
        self._session.qos(prefetch)
        self._tag = self._session.consume(self._queue, self._deliver)
        self._state = state

    def _deliver(self, method, props, body):
        self.inbox.put((method, props, body))
