"""A worker's consumer: which task it takes next, how many deliveries it holds, and
when it gives one back.

A worker consumes its type's two queues (priorities.py): the high queue, for tasks of
priority 5 and more, and `worker_<type>`. What it holds it takes most urgent first
(Inbox: by the priority property, then in the order it came), so a held high task
always starts before a held low one, whichever consumer brought it.

With one delivery in hand (prefetch 1) a worker asks the broker for the next
task only by acking the current one, and waits a round trip for it: on
quorum queues about a millisecond, as long as a short task itself. With a
second delivery already in hand (lookahead) that wait disappears, but a task
held behind a long one waits for it while other workers may be idle
(celery/celery#2788: Celery's prefetch made tasks wait behind a long one).

So the intake takes the next tasks in advance (AHEAD: AHEAD_PREFETCH from
worker_<type>, basic.qos being per consumer; one at a time from the high queue,
HIGH_PREFETCH, asking it for the next before a low one follows a high one) only
while tasks are short:
once the task in hand has run `lookahead` seconds, it stops consuming and
gives back what it holds in advance, of both queues (basic.nack with requeue:
the broker delivers it to a free worker), then takes one task at a time
(SINGLE) until a task finishes within `lookahead` again. A group with an
explicit `prefetch` above 1 gets exactly that prefetch on each consumer, and
no giving back (FIXED).

One task at a time means no consumer while a task runs. Two consumers at
prefetch 1 would hold a task of the other queue behind the one in hand: a
high task waiting for a long low one, or, given back when the task turns long,
the same low task given back by every long high task that runs while it is
the next of its queue, until the broker's delivery limit dead-letters it. So
between tasks SINGLE takes one with basic.get, from the high queue first; only
when both are empty does it consume both (prefetch 1, WAITING) and cancel them
at the first delivery; one more that came in that same moment is given back.

A given-back task arrives elsewhere with `redelivered` set (it was
delivered, though never started), and on quorum queues its x-delivery-count
grows by one, which counts toward the broker's backstop limit
(topology.queue_arguments); taking one task at a time after each give-back
keeps that to the rare task that lands behind a long one after a short one.
"""
import itertools
import logging

import gevent
from gevent.event import Event
from gevent.queue import PriorityQueue

from taskqueue.errors import SessionClosed
from taskqueue.protocol import priorities

log = logging.getLogger(__name__)

FIXED, AHEAD, PAUSED, SINGLE, WAITING = "fixed", "ahead", "paused", "single", "waiting"

#: The prefetch of each consumer while tasks are short: the task in hand and 3 in
#: advance. One in advance (prefetch 2) left a quorum queue's worker waiting on the
#: broker's commit round trip between short tasks: bench/README.md measured one-hop
#: quorum e2e at 1 000-2 000 tasks/s with 2, 2 900-3 600 with 4, 3 700 with 8.
#: More held means more to give back when a task turns long (each given-back
#: task's delivery count grows by one), so no deeper than the gain.
AHEAD_PREFETCH = 4
#: The prefetch of the high queue's consumer while tasks are taken in advance: a task of
#: high priority held by a busy worker is one a free worker cannot start (measured on
#: RabbitMQ 4.0.5: with 4, a worker that started late held 3 of 10 while another, free,
#: started 14 low ones), and a worker asks the broker for the next one anyway before it
#: takes a low one (Inbox, Intake._peek_high).
HIGH_PREFETCH = 1
#: The rank of a wake-up (None) in the Inbox: before any delivery.
WAKE_RANK = -(priorities.HIGHEST + 1)


class Inbox:
    """The deliveries held, (method, properties, body), taken most urgent first
    (priorities.urgency of their priority property, then in the order they came); a
    wake-up (None) before any of them."""

    def __init__(self, peek=None):
        self._queue = PriorityQueue()
        self._order = itertools.count()     # no two items compare equal: deliveries never compared
        self.taken = 0      # deliveries taken by get(): tells the intake one went into hand
        # peek(): a task of high priority that waits in the broker, or None; asked before a
        # low one is taken right after a high one (Intake._peek_high says why).
        self._peek = peek or (lambda: None)
        self._after_high = False

    def put(self, delivery):
        rank = WAKE_RANK if delivery is None else \
            -priorities.urgency(getattr(delivery[1], "priority", None))
        self._queue.put((rank, next(self._order), delivery))

    def get(self, block=True, timeout=None):
        """The most urgent delivery (or None: a wake-up); gevent.queue.Empty as Queue.get."""
        item = self._queue.get(block, timeout)
        delivery = item[2]
        if delivery is None:
            return None
        if self._after_high and not _is_high(delivery):
            waiting = self._peek()
            if waiting is not None:
                self._queue.put(item)       # as it was: its rank and place kept
                delivery = waiting
        self._after_high = _is_high(delivery)
        self.taken += 1
        return delivery

    def get_nowait(self):
        return self.get(False)

    def qsize(self):
        return self._queue.qsize()

    def drain(self):
        """Take out everything held: (the deliveries, most urgent first; whether a wake-up
        was among them)."""
        items = [self._queue.get_nowait()[2] for _ in range(self._queue.qsize())]
        deliveries = [item for item in items if item is not None]
        return deliveries, len(deliveries) < len(items)


def _is_high(delivery):
    return priorities.is_high(getattr(delivery[1], "priority", None))


class Intake:
    """Deliveries of `queues` (most urgent first) in `inbox`; None wakes the reader."""

    def __init__(self, session, queues, prefetch, lookahead):
        self.inbox = Inbox(self._peek_high)
        self._session = session
        self._queues = tuple(queues)
        self._prefetch = prefetch
        # Seconds a task may run before what is held in advance goes back (None: never).
        self.lookahead = lookahead if prefetch == 1 and lookahead else None
        self._state = None
        self._tags = []
        self._set_up = Event()      # set while no consumer is being started
        self._set_up.set()
        self._unwaiting = None      # the greenlet that ends WAITING (_stop_waiting)
        self._taken_before = 0      # inbox.taken when WAITING began

    def start(self):
        """Start consuming (one at a time: take a first task); returns the prefetch in use,
        per consumer."""
        if self._prefetch > 1:
            self._consume(self._prefetch, FIXED)
        elif self.lookahead is None:
            self._take_one()
        else:
            self._consume(AHEAD_PREFETCH, AHEAD)
        return AHEAD_PREFETCH if self._state is AHEAD else self._prefetch

    def wake(self):
        self.inbox.put(None)

    @property
    def holds_ahead(self):
        """True while the task in hand may have others waiting behind it."""
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
            # Every delivery to a cancelled consumer came before its cancel-ok.
            self._cancel()
            self._state = PAUSED
            given = self._give_back(self.inbox.drain())
        except SessionClosed:
            return  # the connection went: the broker requeues everything anyway
        if given:
            log.debug("task in hand past lookahead %gs: gave back %d held in advance",
                      self.lookahead, given)

    def task_done(self, seconds):
        """After each task: take the next one in advance again once a task was short;
        else (after a give-back, a long task, or without lookahead) one at a time."""
        if self._state in (FIXED, AHEAD):
            return
        try:
            self._end_waiting()
            if self._state is SINGLE and self.lookahead is not None and seconds < self.lookahead:
                self._consume(AHEAD_PREFETCH, AHEAD)
            else:
                self._take_one()
        except SessionClosed:
            pass  # the worker's loop sees the session closed and exits for a restart

    def _take_one(self):
        """One task into the inbox, from the first queue that has one (basic.get); when
        none has, consume them all until one comes (WAITING)."""
        for queue in self._queues:
            delivery = self._session.get(queue)
            if delivery is not None:
                self._state = SINGLE
                self.inbox.put(delivery)
                return
        self._taken_before = self.inbox.taken
        self._consume(1, WAITING)

    def _consume(self, prefetch, state):
        """Consume every queue: the high queue (the first) with prefetch 1 while tasks are
        taken in advance (AHEAD), each other with `prefetch`."""
        self._state = state
        self._set_up.clear()
        try:
            self._tags, last = [], None
            for n, queue in enumerate(self._queues):
                wanted = HIGH_PREFETCH if state is AHEAD and n == 0 else prefetch
                if wanted != last:  # basic.qos applies to each consumer started after it
                    self._session.qos(wanted)
                    last = wanted
                self._tags.append(self._session.consume(queue, self._deliver))
        finally:
            self._set_up.set()

    def _peek_high(self):
        """A task waiting in the high queue, taken (basic.get) before a held low one right
        after a high one: the high consumer's next delivery is a round trip away, and
        without this the worker would start a low task meanwhile. Only while consuming
        (one at a time, the high queue is asked first anyway)."""
        if self._state not in (AHEAD, FIXED) or not self._session.is_open:
            return None
        try:
            return self._session.get(self._queues[0])
        except SessionClosed:
            return None

    def _cancel(self):
        tags, self._tags = self._tags, []
        for tag in tags:
            self._session.cancel(tag)

    def _deliver(self, method, props, body):
        # In the hub: it must not block. WAITING ends at the first delivery.
        self.inbox.put((method, props, body))
        if self._state is WAITING:
            self._state = SINGLE
            self._unwaiting = gevent.spawn(self._stop_waiting)

    def _stop_waiting(self):
        """Cancel the consumers that waited for one task; give back any other that came
        before they stopped (the most urgent one stays, if the worker took none yet)."""
        self._set_up.wait()     # the consumers are all started: each has its tag
        try:
            self._cancel()
            given, woken = self.inbox.drain()
            if given and self.inbox.taken == self._taken_before:
                self.inbox.put(given.pop(0))
            given = self._give_back((given, woken))
        except SessionClosed:
            return
        if given:
            log.debug("gave back %d delivered with the task taken", given)

    def _end_waiting(self):
        """Wait until WAITING has fully ended (its consumers cancelled)."""
        if self._unwaiting is not None:
            self._unwaiting.join()
            self._unwaiting = None

    def _give_back(self, drained):
        """Nack with requeue the deliveries `drained` (Inbox.drain), keep a wake-up;
        return how many went back."""
        given, woken = drained
        if woken:   # a stop or close request: keep it
            self.inbox.put(None)
        for method, _, _ in given:
            self._session.nack(method.delivery_tag, requeue=True)
        return len(given)
