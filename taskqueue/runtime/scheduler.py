"""The scheduler: the child of a worker pool that fires the periodic tasks of the
schedules it leads (protocol/schedules.py says when, protocol/firings.py who leads).

Every pool with schedules runs one. For each schedule it tries to take the lead (the
schedule's exclusive lead queue, on this child's connection); the one that holds it
fires the schedule's slots, the others try again every firings.LEAD_RETRY seconds. The
broker deletes a lead queue with its connection, so a leader that dies or loses the
broker lets another pool take over; a leader that loses its connection loses all its
leads at once and can publish nothing meanwhile (the same connection).

A new leader first reads the schedules stream (the last slot each schedule fired, and
whoever led it before), then fires only slots newer than that: none twice, unless the
last leader died between a task's confirm and its record's (a few milliseconds): then
that slot's task goes twice, with the same message id (firings.message_id).

A fired task goes out as Client.submit sends it (one hop, confirmed), with its message
id derived from schedule and slot; then its `fired` record, confirmed.
"""
import logging
import time

import gevent

from taskqueue.broker import amqp, schedulelog
from taskqueue.broker.eventlog import EventLog
from taskqueue.errors import PublishNacked, SessionClosed, TaskqueueError, TopologyError
from taskqueue.broker.pikaparams import onehop_properties, steered, task_properties
from taskqueue.protocol import firings, plans, schedules
from taskqueue.supervision.lifecycle import EXIT_CONNECTION, EXIT_OK

log = logging.getLogger(__name__)

#: Longest the loop sleeps: a clock stepped meanwhile is noticed within it.
MAX_NAP = 1.0
#: Seconds before a record the broker refused is written again (as a `held` one).
RECORD_RETRY = 5.0


class Scheduler:
    """The schedules this process leads, and its turn: take leads, fire what is due.
    `clock`: seconds since the epoch (time.time; tests inject another)."""

    def __init__(self, session, schedule_list, settings, clock=time.time, name="scheduler",
                 events=None):
        self.session = session
        self.schedules = {schedule.name: schedule for schedule in schedule_list}
        self.settings = settings
        self.clock = clock
        self.name = name
        self.events = events
        self.last = {}          # led schedule -> last slot fired (or the time the lead began)
        self.held_at = {}       # led schedule -> when its `held` record was written
        self.retry_at = {}      # schedule not led -> when to try again (time.monotonic)
        self.refused = set()    # schedules whose lead queue the broker refuses us (said once)
        self.fired = 0

    @property
    def leading(self):
        return sorted(self.last)

    def start(self):
        schedulelog.declare_stream(self.session)

    def turn(self):
        """Try the leads that are due a try, fire every slot due; return the seconds the
        caller may wait before the next turn."""
        for name in self.schedules:
            if name not in self.last and time.monotonic() >= self.retry_at.get(name, 0):
                self._try_lead(name)
        now = self.clock()
        for name in self.leading:
            self._fire_due(self.schedules[name], now)
        return self._nap(now)

    def _try_lead(self, name):
        try:
            self.session.declare_plan(plans.lead_queue(name), any_refusal=True)
        except TopologyError as exc:
            self.retry_at[name] = time.monotonic() + firings.LEAD_RETRY
            if not plans.held_elsewhere(exc) and name not in self.refused:
                self.refused.add(name)      # said once: it is tried again all the same
                log.error("%s; this pool cannot lead it", exc)
            return
        self.refused.discard(name)
        # Ours now. What fired before: read after the lead was taken, so that every record
        # its last holder confirmed is in (that holder's connection is gone).
        began = self.clock()
        try:
            history = gevent.get_hub().threadpool.apply(
                schedulelog.read_history, (self.settings, f"taskqueue {self.name} history",
                                           None, began + firings.FUTURE_MARGIN))
        except TaskqueueError as exc:
            # Not knowing what fired, it must not fire: the process starts over (its lead
            # goes with its connection), as after a lost broker.
            raise SessionClosed(f"schedule {name}: cannot read {firings.STREAM}: {exc}") from None
        if history.future:
            log.warning("schedule %s: %d records of %s name a slot more than %gs ahead of "
                        "this clock: not believed", name, history.future, firings.STREAM,
                        firings.FUTURE_MARGIN)
        fired = history.fired.get(name)
        before = history.lead.get(name)
        self.last[name] = fired if fired is not None else began
        self._record(name, firings.LEAD, fired)
        log.info("schedule %s: leading it (last slot fired: %s; led before by %s)", name,
                 firings.slot_id(fired) if fired is not None else "none known",
                 before[0] if before else "nobody known")

    def _fire_due(self, schedule, now):
        slot = schedules.due(schedule, self.last[schedule.name], now)
        if slot is None:
            if time.monotonic() - self.held_at[schedule.name] >= firings.HELD_EVERY:
                self._held(schedule.name)
            return
        message_id = firings.message_id(schedule.name, slot)
        props = onehop_properties(task_properties(message_id), schedule.worker_type)
        steered(props, schedule.priority, schedule.expires)
        try:
            self.session.publish_onehop(schedule.worker_type, schedule.body, props)
        except PublishNacked as exc:
            log.warning("schedule %s: slot %s not fired (%s); trying again", schedule.name,
                        firings.slot_id(slot), exc)
            return
        # Fired: never again from this process, whatever becomes of its record.
        self.last[schedule.name] = slot
        self.fired += 1
        self._record(schedule.name, firings.FIRED, slot)
        late = now - slot
        log.info("schedule %s: fired slot %s as task %s%s", schedule.name,
                 firings.slot_id(slot), message_id,
                 f" ({late:.0f}s late: missed = latest)" if late > schedules.GRACE else "")
        if self.events is not None:
            self.events.add("submitted", message_id, schedule.worker_type)

    def _held(self, name):
        self._record(name, firings.HELD, self.last[name])

    def _record(self, name, why, slot):
        """Publish a record of schedule `name`, confirmed. One the broker refuses (a full
        stream: nacks) is said, and said again soon by a `held` record: only a new leader
        would read it, and fire that slot again without it."""
        try:
            schedulelog.publish_record(self.session, firings.record(name, why, slot))
            self.held_at[name] = time.monotonic()
        except PublishNacked as exc:
            log.warning("schedule %s: its %s record (slot %s) not taken: %s", name, why,
                        firings.slot_id(slot) if slot is not None else "none", exc)
            self.held_at[name] = time.monotonic() - firings.HELD_EVERY + RECORD_RETRY

    def _nap(self, now):
        """Seconds until the next slot of a led schedule or the next lead try, at most
        MAX_NAP."""
        nap = MAX_NAP
        for name in self.leading:
            upcoming = schedules.next_slot(self.schedules[name], max(self.last[name], now))
            nap = min(nap, upcoming - now)
        for name, at in self.retry_at.items():
            if name not in self.last:
                nap = min(nap, at - time.monotonic())
        return max(0.0, nap)


def run_scheduler(amqp_settings, schedule_list, ctx):
    """The body of a scheduler child; returns an exit code."""
    session = amqp.Session(amqp_settings, f"taskqueue {ctx.name}", ctx.route).open()
    events = EventLog(session, ctx.name, amqp_settings)
    scheduler = Scheduler(session, schedule_list, amqp_settings, name=ctx.name, events=events)
    try:
        scheduler.start()
        ctx.ready()
        events.start()
        log.info("%d schedules: %s", len(schedule_list),
                 ", ".join(f"{s.name} ({s.when})" for s in schedule_list))
        while not ctx.stopping.is_set() and session.is_open:
            nap = scheduler.turn()
            gevent.wait([ctx.stopping, session.closed], count=1, timeout=nap)
    except SessionClosed:
        if not session.connection_lost:
            raise
    if not session.is_open:
        log.warning("%s", session.loss())
        return EXIT_CONNECTION
    events.close()
    session.close()
    return EXIT_OK
