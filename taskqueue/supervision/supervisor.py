"""The supervisor: fork children, watch them, restart them, stop them.

One gevent process that holds no AMQP connection, imports no plugin code and
starts no threads, so a fork inherits nothing dangerous. Signal handlers,
child watchers, the children's report pipes and timers only put events on one queue; the
main loop takes them one by one and dispatches to `handle_<event>`, which
drives each child's state machine (lifecycle.py) and performs the side effect
of the state entered (`enter_<state>`). A handler that raises is logged with
its traceback and supervising goes on; when the supervisor cannot go on, it
stops its children gracefully before it exits 1 (`dispatch`, `supervise`).
"""
import functools
import logging
import os
import random
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Optional

import gevent
import gevent.os
import gevent.socket
from gevent.pool import Group
from gevent.queue import Empty, Queue

from taskqueue.broker import failover
from taskqueue.errors import IllegalTransition, SupervisorFailure, TaskqueueError
from taskqueue.supervision import child, lastresort, metrics
from taskqueue.supervision.graveyard import GRAVEYARD_SIZE, Graveyard
from taskqueue.supervision.lifecycle import (EXIT_CONNECTION, QUARANTINE_SECONDS, ChildState, Ev,
                                             Restart, describe_exit, exit_code_of, fork_failed,
                                             next_state, parse_done, restart_decision)
from taskqueue.supervision.reports import ReportReader
from taskqueue.supervision.specs import ChildSpec, diff_specs

log = logging.getLogger(__name__)

#: Seconds between two reads of a child's report pipe.
REPORT_BATCH = 0.01
#: Brokers remembered as failed: a child names them, so it must not grow the table
#: without bound (the config lists far fewer).
BROKER_FAILURES_MAX = 64
#: The main loop wakes at least this often, which also keeps the hub from
#: deciding it has nothing left to wait for (signal and child watchers are unref'ed).
TICK = 1.0


def _short(value, limit=200):
    """An event's argument for a log line: a slot by its name, the rest by repr, cut short."""
    text = value.key if isinstance(value, Slot) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass(eq=False)
class Slot:
    """One supervised child position: it keeps its name across restarts."""
    spec: ChildSpec
    index: int
    state: ChildState = ChildState.STOPPED
    pid: Optional[int] = None
    started_at: float = 0.0
    ready: bool = False
    failures: int = 0               # quick failures in a row
    restarts: int = 0
    last_exit: Optional[str] = None
    exited_at: float = 0.0          # monotonic time of that exit
    retired: bool = False           # a reload removed or changed its spec: drop it once stopped
    task: Optional[str] = None      # message id of the task it is handling, if any
    task_started: float = 0.0
    tasks_done: int = 0
    retries: int = 0                # tasks it put off for later (outcome `retry`)
    expired: int = 0                # tasks it found past their deadline (outcome `expired`)
    task_timer: Optional[gevent.Greenlet] = field(default=None, repr=False)
    killed_for: Optional[str] = None  # why the supervisor killed it, for the exit line
    restart: Optional[Restart] = None  # what followed its last exit (lifecycle.restart_decision)
    timer: Optional[gevent.Greenlet] = field(default=None, repr=False)
    timer_due: float = 0.0          # monotonic time the timer fires
    broker: Optional[str] = None    # `host:port` it is connected to, and what that broker said
    lost_broker: bool = False       # it logged losing its broker: its exit 3 says nothing new

    @property
    def key(self):
        return f"{self.spec.name}#{self.index}"


class Supervisor:
    def __init__(self, specs, reload=None, endpoints=(), fork=None, kill=os.kill, graveyard=None):
        """`reload()`, called on SIGHUP, returns the new list of specs or raises TaskqueueError.
        `endpoints` (endpoints.Endpoint: status, metrics) are served while it runs; their
        owner closes them. `fork(callback)` forks and watches the child, calling
        callback(watcher) when it ends (gevent.os.fork_and_watch); `kill(pid, sig)`
        signals a child. Unit tests pass stand-ins for both (tests/unit/fakes.py).
        `graveyard`: the graveyard.Graveyard made before the privilege drop (daemon.py);
        None: open() makes one where this user may (graveyard.graveyard_parent)."""
        self._reload = reload
        self._fork = fork or gevent.os.fork_and_watch
        self._os_kill = kill
        self._endpoints = list(endpoints)
        self.metrics = metrics.Registry()
        self.started_at = time.monotonic()
        self.specs = list(specs)
        self.slots = [Slot(spec, i) for spec in self.specs for i in range(spec.processes)]
        self.events = Queue()
        self._by_pid = {}
        self._greenlets = Group()        # killed in every child right after the fork
        self._signal_handles = []
        #: {pid: (reports.ReportReader, its greenlet)}: our end of each child's report pipe.
        self._reports = {}
        self.graveyard = graveyard      # deaths by task (graveyard.Graveyard); else open()
        #: {task key: queue}: the queue of each task a death was recorded for; only a
        #: child consuming that queue can make the supervisor forget those deaths.
        self._death_queues = {}
        self._stopping = False
        self._killed = False
        self._error_budget = lastresort.ErrorBudget()
        #: {"host:port": (monotonic time, why)}: brokers the children failed to reach or
        #: lost; a child forked next tries those last (failover.Route), status shows them.
        self.broker_failures = {}
        self._spread = failover.spread_offset(socket.gethostname())

    # -- main loop -----------------------------------------------------------

    def run(self):
        """Start every child and supervise until stopped; return the exit code."""
        self.open()
        try:
            return self.supervise()
        finally:
            self.close()

    def open(self):
        """Set up what supervising needs: the graveyard, the signal handlers, the
        endpoints. Forks nothing yet (each child's report pipe is made at its fork)."""
        # Gone when the supervisor stops, or, once it and its children were killed,
        # when the next supervisor starts.
        if self.graveyard is None:
            self.graveyard = Graveyard.create()
        for sig in child.SUPERVISOR_SIGNALS:
            self._signal_handles.append(gevent.signal_handler(sig, self.events.put_nowait, ("signal", sig)))
        for endpoint in self._endpoints:
            endpoint.serve(self)

    def start(self):
        """Start every child."""
        log.info("supervisor started: %s", ", ".join(
            f"{s.name} x{s.processes}" + (f" as {s.user}" if s.user else "")
            for s in self.specs) or "nothing to run")
        for slot in self.slots:
            self.transition(slot, Ev.START)

    def supervise(self):
        """Start every child, then handle events until stopped; return the exit code.

        If the supervisor cannot go on (dispatch gave up, or the loop itself
        failed), its children are stopped gracefully, never orphaned, and it
        returns 1 (lastresort.py).
        """
        try:
            self.start()
            while not self.finished:
                try:
                    event = self.events.get(timeout=TICK)
                except Empty:
                    continue
                self.dispatch(event)
        except SupervisorFailure:
            return self._stop_after_failure()
        except Exception:
            log.exception("internal error in the supervisor")
            return self._stop_after_failure()
        log.info("supervisor stopped%s", " (children had to be killed)" if self._killed else "")
        return 1 if self._killed else 0

    def dispatch(self, event):
        """Handle one event from the queue: (name, *args) -> handle_<name>(*args).

        A handler that raises is a bug met handling one event, most likely for
        one child: it is logged with its traceback and the healthy children go
        on being supervised. SupervisorFailure when that cannot be trusted any
        more: errors keep coming (lastresort.ErrorBudget: an invariant is
        broken), or the supervisor is stopping (a stop gone wrong could wait
        forever).
        """
        name, *args = event
        try:
            getattr(self, f"handle_{name}")(*args)
        except Exception:
            log.exception("internal error while handling %s %s", name,
                          " ".join(_short(arg) for arg in args))
            if self._stopping or not self._error_budget.spend():
                raise SupervisorFailure(f"internal error while handling {name}") from None

    def _stop_after_failure(self):
        self._stopping = True
        self._killed = lastresort.stop_children(
            {pid: slot.key for pid, slot in self._by_pid.items()}, self.events, self._os_kill,
            max((slot.spec.stop_timeout for slot in self._by_pid.values()), default=0.0))
        log.info("supervisor stopped after an internal error")
        return 1

    @property
    def finished(self):
        """Stopping, and every child has stopped."""
        return self._stopping and all(s.state is ChildState.STOPPED for s in self.slots)

    def close(self):
        """Undo open(); children are not touched."""
        for handle in self._signal_handles:
            handle.cancel()
        self._signal_handles = []
        self._greenlets.kill(block=True, timeout=1)   # the report readers among them
        for reader, _ in self._reports.values():
            reader.close()
        self._reports.clear()
        self.graveyard.remove()

    @property
    def stopping(self):
        return self._stopping

    # -- events (all of them arrive through self.events) ---------------------

    def handle_signal(self, sig):
        """SIGTERM/SIGINT: stop gracefully; a second one kills at once. SIGHUP: reload."""
        if sig == signal.SIGHUP:
            if not self._stopping:
                self.reload()
            return
        if self._stopping:
            log.warning("%s again: killing the remaining children now", signal.Signals(sig).name)
            for slot in self.slots:
                if slot.state is ChildState.STOPPING:
                    self._kill(slot)
            return
        log.info("%s: stopping gracefully", signal.Signals(sig).name)
        self._stopping = True
        for slot in self.slots:
            self.transition(slot, Ev.STOP)

    def handle_exit(self, pid, status):
        self._close_reports(pid)
        slot = self._by_pid.pop(pid, None)
        if slot is None:
            return
        slot.exited_at = time.monotonic()
        uptime = slot.exited_at - slot.started_at
        slot.last_exit = describe_exit(status) + (f" ({slot.killed_for})" if slot.killed_for else "")
        restart = restart_decision(exit_code_of(status), slot.ready, uptime,
                                   slot.task is not None, slot.failures)
        self.metrics.child_exited(slot.spec.name, metrics.exit_cause(status, slot.killed_for))
        if slot.task is not None:
            self.metrics.task_ended(slot.spec.name, metrics.KILLED)
            slot.last_exit += f" during task {slot.task}"
            try:
                self.graveyard.record(slot.task, f"{slot.key} pid {pid}: {slot.last_exit}")
                self._remember_death_queue(slot.task, slot.spec.queue)
            except OSError as exc:  # the cause is a courtesy; supervising is not
                log.warning("cannot record the cause of death in %s: %s", self.graveyard.path, exc)
        # A child that lost its broker warned of it (one line per lost connection):
        # its exit 3 is no news, logged at INFO.
        expected = slot.state is ChildState.STOPPING or (
            slot.lost_broker and exit_code_of(status) == EXIT_CONNECTION)
        slot.killed_for, slot.task, slot.broker, slot.lost_broker = None, None, None, False
        self._cancel_task_timer(slot)
        slot.failures, slot.restart = restart.failures, restart
        level = logging.INFO if expected else logging.WARNING
        log.log(level, "%s pid=%d %s after %.2fs", slot.key, pid, slot.last_exit, uptime)
        self.transition(slot, restart.event)  # logs the pid that died, then forgets it

    def handle_ready(self, pid, detail=""):
        slot = self._by_pid.get(pid)
        if slot is not None and slot.state is ChildState.STARTING:
            slot.ready = True
            self.transition(slot, Ev.READY, f"ready in {time.monotonic() - slot.started_at:.3f}s")

    def handle_busy(self, pid, detail):
        """`<task key>[ first]`: the child started a task (`first`: its first delivery)."""
        slot = self._by_pid.get(pid)
        if slot is None:
            return
        key, _, first = detail.partition(" ")
        if first == child.FIRST_DELIVERY:
            # An earlier task of that key, settled or requeued.
            self._forget_deaths(key, slot.spec.queue)
        slot.task, slot.task_started = key, time.monotonic()
        if slot.spec.task_timeout:
            slot.task_timer = gevent.spawn_later(slot.spec.task_timeout, self.events.put_nowait,
                                                 ("task_timeout", slot, pid, slot.tasks_done))
            self._greenlets.add(slot.task_timer)

    def handle_reports(self, reports):
        """What one child wrote on its pipe, in order: one event per read, not per line.
        Each report names the pid whose pipe it came from (never what the child wrote)."""
        for event, pid, detail in reports:
            getattr(self, f"handle_{event}")(pid, detail)

    def handle_broker(self, pid, detail=""):
        """`<host:port> <what the broker said of itself>`: the child connected there."""
        slot = self._by_pid.get(pid)
        self.broker_failures.pop(detail.partition(" ")[0], None)
        if slot is not None:
            slot.broker = detail

    def handle_unreachable(self, pid, detail=""):
        """`<host:port> <why>`: the child could not connect there; tried last for a while."""
        where, _, why = detail.partition(" ")
        self.broker_failures.pop(where, None)   # re-inserted last: the table is oldest first
        self.broker_failures[where] = (time.monotonic(), why)
        while len(self.broker_failures) > BROKER_FAILURES_MAX:
            del self.broker_failures[next(iter(self.broker_failures))]

    def handle_lost(self, pid, detail=""):
        """`<host:port> <why>`: the child lost its broker (it logged it, and exits)."""
        self.handle_unreachable(pid, detail)
        slot = self._by_pid.get(pid)
        if slot is not None:
            slot.broker, slot.lost_broker = None, True

    def handle_done(self, pid, detail=""):
        """`<outcome> <seconds>`: the child settled its task (lifecycle.TASK_OUTCOMES)."""
        slot = self._by_pid.get(pid)
        if slot is None:
            return
        ended = parse_done(detail)
        if ended is not None:
            self.metrics.task_ended(slot.spec.name, *ended)
            slot.retries += ended[0] == "retry"
            slot.expired += ended[0] == "expired"
        if slot.task is not None and (ended is None or ended[0] != "requeue"):
            # Settled: its next life starts at 0 deaths.
            self._forget_deaths(slot.task, slot.spec.queue)
        slot.task = None
        slot.tasks_done += 1
        slot.failures = 0  # it settled a task: whatever failed before is behind it
        self._cancel_task_timer(slot)

    def handle_task_timeout(self, slot, pid, tasks_done):
        """A task ran past its group's task_timeout: kill the process. The broker
        requeues the delivery, counted toward the delivery limit."""
        slot.task_timer = None
        if slot.pid == pid and slot.task is not None and slot.tasks_done == tasks_done:
            log.error("%s pid=%d: task %s still running after task_timeout %gs; killing the process",
                      slot.key, pid, slot.task, slot.spec.task_timeout)
            slot.killed_for = "task_timeout"
            self._signal(slot, signal.SIGKILL)

    def handle_timer(self, slot):
        slot.timer = None
        if slot.state in (ChildState.BACKOFF, ChildState.QUARANTINED) and not self._stopping:
            self.transition(slot, Ev.TIMER)

    def handle_spawn_failed(self, slot):
        if slot.state is ChildState.STARTING and slot.pid is None:
            slot.restart = fork_failed(slot.failures)
            slot.failures = slot.restart.failures
            self.transition(slot, slot.restart.event)

    def handle_grace_expired(self, slot, pid):
        if slot.state is ChildState.STOPPING and slot.pid == pid:
            log.warning("%s pid=%d still running %gs after SIGTERM; killing it",
                        slot.key, pid, slot.spec.stop_timeout)
            self._kill(slot)

    def reload(self):
        """Apply a new configuration: start what is new, stop what is gone, restart
        what changed, leave the rest alone (and retry what is quarantined)."""
        if self._reload is None:
            log.warning("SIGHUP: this supervisor cannot reload; ignored")
            return
        try:
            specs = self._reload()
        except TaskqueueError as exc:
            log.error("reload refused, the running configuration stays: %s", exc)
            return
        added, changed, removed, unchanged = diff_specs(self.specs, specs)
        log.info("reload: %d added, %d changed, %d removed, %d unchanged", len(added),
                 len(changed), len(removed), len(unchanged))
        gone = {spec.name for spec in changed + removed}
        for slot in [slot for slot in self.slots if slot.spec.name in gone]:
            slot.retired = True
            self.transition(slot, Ev.STOP)
        self.specs = specs
        for spec in added + changed:
            for index in range(spec.processes):
                slot = Slot(spec, index)
                self.slots.append(slot)
                self.transition(slot, Ev.START)
        for slot in self.slots:
            if slot.state is ChildState.QUARANTINED:
                slot.failures = 0
                self.transition(slot, Ev.START)

    # -- the state machine and the side effect of each state ------------------

    def transition(self, slot, event, note=""):
        exited = event in (Ev.DIED, Ev.DIED_QUICKLY, Ev.DISCONNECTED, Ev.TASK_KILLED, Ev.LOAD_FAILED)
        try:
            new = next_state(slot.state, event, slot.failures, has_process=slot.pid is not None)
        except IllegalTransition as exc:
            log.error("%s pid=%s: %s", slot.key, slot.pid, exc)
            if exited:
                slot.pid = None  # never signal a pid that is gone (and may be reused)
            return
        if new is slot.state and not exited:
            return  # nothing happened (a stop of what is stopping): no line, no side effect
        old, slot.state = slot.state, new
        # The contract line of every transition: tests and operators read it.
        log.info("%s pid=%s %s -> %s%s", slot.key, slot.pid or "-", old.value, new.value,
                 f" ({note})" if note else "")
        if exited:
            slot.pid = None
        enter = getattr(self, f"enter_{new.value.lower()}", None)
        if enter is not None:
            enter(slot)

    def enter_starting(self, slot):
        if slot.started_at:
            slot.restarts += 1
            self.metrics.child_restarted(slot.spec.name)
        slot.ready = False
        self._cancel_timer(slot)
        self._spawn(slot)

    def enter_backoff(self, slot):
        delay = slot.restart.delay(random.random())
        if delay:
            log.warning("%s failed %d times in a row; next start in %.1fs",
                        slot.key, slot.failures, delay)
        self._arm_timer(slot, delay)

    def enter_quarantined(self, slot):
        log.error("%s quarantined after %s; retrying in %.0fs (or on SIGHUP)",
                  slot.key, slot.last_exit, QUARANTINE_SECONDS)
        self._arm_timer(slot, QUARANTINE_SECONDS)

    def enter_stopping(self, slot):
        self._signal(slot, signal.SIGTERM)
        self._arm_timer(slot, slot.spec.stop_timeout, ("grace_expired", slot, slot.pid))

    def enter_stopped(self, slot):
        self._cancel_timer(slot)
        if slot.retired:
            self.slots.remove(slot)

    # -- helpers -------------------------------------------------------------

    def _spawn(self, slot):
        parent = os.getpid()
        try:
            # The child's own report pipe: whatever arrives on it is about that child.
            reports_r, reports_w = os.pipe()
        except OSError as exc:  # EMFILE: an fd limit; this slot backs off
            log.error("%s: cannot make its report pipe: %s", slot.key, exc)
            self.events.put_nowait(("spawn_failed", slot))
            return
        # Blocked across the fork: the child must never run our handlers (child.py).
        signal.pthread_sigmask(signal.SIG_BLOCK, child.SUPERVISOR_SIGNALS)
        try:
            try:
                pid = self._fork(callback=self._on_child_exit)
            except OSError as exc:  # EAGAIN: a process limit; this slot backs off
                log.error("%s: cannot fork: %s", slot.key, exc)
                os.close(reports_r)
                self.events.put_nowait(("spawn_failed", slot))
                return
            if pid == 0:
                child.run(slot.key, slot.spec.kind, slot.spec.user, slot.spec.target,
                          functools.partial(self._forget_inherited, reports_r), reports_w,
                          parent, self.graveyard, self._route(slot))
        finally:
            # The write end is the child's alone: no later child inherits it.
            os.close(reports_w)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, child.SUPERVISOR_SIGNALS)
        slot.pid, slot.started_at = pid, time.monotonic()
        self._by_pid[pid] = slot
        reader = ReportReader(reports_r)
        self._reports[pid] = (reader, self._greenlets.spawn(self._read_reports, reader, pid))
        log.debug("%s forked pid=%d", slot.key, pid)

    def _route(self, slot):
        """Where the child of `slot` connects first: its position among all children
        (so that a pool spreads over the brokers), the brokers that failed last."""
        position = self.slots.index(slot) if slot in self.slots else slot.index
        return failover.Route(first=self._spread + position,
                             failed={where: when for where, (when, _) in self.broker_failures.items()})

    def _forget_inherited(self, own_reports_r):
        """In a fresh child: drop what belongs to the supervisor (runs before anything else),
        the read ends of every report pipe included: a child reads no one's reports."""
        for handle in self._signal_handles:
            handle.cancel()
        # First, before the hub runs here (killing greenlets with block=True runs it): a
        # copy of an endpoint's acceptor would take the supervisor's next client.
        for endpoint in self._endpoints:
            endpoint.detach()
        self._greenlets.kill(block=True, timeout=1)
        for endpoint in self._endpoints:
            endpoint.forget()
        for reader, _ in self._reports.values():
            reader.close()
        os.close(own_reports_r)

    def _remember_death_queue(self, key, queue):
        self._death_queues.pop(key, None)
        self._death_queues[key] = queue
        while len(self._death_queues) > GRAVEYARD_SIZE:   # the graveyard keeps no more
            del self._death_queues[next(iter(self._death_queues))]

    def _forget_deaths(self, key, queue=None):
        """`key` was settled or arrived afresh in a child consuming `queue`. A child
        names the key itself: the deaths of a task of another queue are not its to forget."""
        if self.graveyard is None:   # not open(): nothing was recorded
            return
        if queue is not None and self._death_queues.get(key, queue) != queue:
            log.warning("a child of %s named task %s, whose deaths were in %s: ignored",
                        queue, key, self._death_queues[key])
            return
        self._death_queues.pop(key, None)
        try:
            self.graveyard.forget(key)
        except OSError as exc:  # a stale count only ends a poison task sooner
            log.warning("cannot forget the deaths of task %s in %s: %s", key, self.graveyard.path, exc)

    def _on_child_exit(self, watcher):
        # What the child reported before it died comes first (its `ready`, its `busy`).
        if watcher.pid in self._reports:
            self._take_reports(self._reports[watcher.pid][0], watcher.pid)
        self.events.put_nowait(("exit", watcher.pid, watcher.rstatus))

    def _read_reports(self, reader, pid):
        """Read the report pipe of the child `pid` until no one can write to it."""
        while not reader.eof and reader.fd is not None:
            gevent.socket.wait_read(reader.fd)
            # Under load a child reports hundreds of tasks a second: then take
            # them in batches, a wake-up per REPORT_BATCH, not one per line. A
            # lone report (a restarted child's `ready`) is taken at once.
            # (A child's exit takes what it reported first: nothing is missed.)
            if self._take_reports(reader, pid) > 1:
                gevent.sleep(REPORT_BATCH)

    def _take_reports(self, reader, pid):
        """Turn the complete lines now in the pipe of child `pid` into one event (never
        blocks); return how many reports they held. Plugin code runs in the child and
        may write there too: only well-formed lines count, and only for that child."""
        if reader.fd is None:
            return 0
        reports = [(event, pid, detail) for event, detail in reader.read()]
        if reports:
            self.events.put_nowait(("reports", reports))
        return len(reports)

    def _close_reports(self, pid):
        """The child `pid` is gone: stop reading its pipe, close our end (no fd leaks
        across restarts; a grandchild still holding the write end gets EPIPE)."""
        reader, greenlet = self._reports.pop(pid, (None, None))
        if reader is not None:
            greenlet.kill(block=True, timeout=1)   # it may wait on the fd: stop that first
            reader.close()

    def _arm_timer(self, slot, delay, event=None):
        self._cancel_timer(slot)
        slot.timer = gevent.spawn_later(delay, self.events.put_nowait, event or ("timer", slot))
        slot.timer_due = time.monotonic() + delay
        self._greenlets.add(slot.timer)

    def _cancel_timer(self, slot):
        if slot.timer is not None:
            slot.timer.kill(block=False)
            slot.timer = None

    def _cancel_task_timer(self, slot):
        if slot.task_timer is not None:
            slot.task_timer.kill(block=False)
            slot.task_timer = None

    def _kill(self, slot):
        if slot.pid:
            self._killed = True
            self._signal(slot, signal.SIGKILL)

    def _signal(self, slot, sig):
        try:
            self._os_kill(slot.pid, sig)
        except ProcessLookupError:
            pass  # it exited; its exit event is on its way
