"""The Supervisor's event handling, driven event by event with a fake fork.

No process is forked: tests/unit/fakes.FakeProcesses hands out pids and
records signals, and each test feeds the supervisor the events its signal
handlers, child watchers and report pipe would (tests/integration/
test_supervisor.py and test_reload.py do the same with real processes).
"""
import errno
import logging
import os
import signal
import time

import gevent
import pytest

from taskqueue.supervision import lastresort
from taskqueue.supervision.lifecycle import (EXIT_CONNECTION, EXIT_OK, EXIT_PLUGIN_LOAD,
                                             QUARANTINE_AFTER, RECONNECT_CAP, ChildState)
from taskqueue.supervision.specs import ChildSpec
from taskqueue.supervision.supervisor import BROKER_FAILURES_MAX, Supervisor

from fakes import FakeProcesses

S = ChildState


def target(ctx):
    raise AssertionError("a fake fork never runs the child's target")


def spec(name="worker1", processes=1, stop_timeout=5.0, **changes):
    return ChildSpec(name, processes, target, stop_timeout=stop_timeout,
                     queue=f"worker_{name}", **changes)


def exited(code):
    return code << 8


@pytest.fixture
def procs():
    return FakeProcesses()


@pytest.fixture
def make(procs):
    made = []

    def make(*specs, reload=None):
        sup = Supervisor(specs or [spec()], reload=reload, fork=procs.fork_and_watch,
                         kill=procs.kill)
        sup.open()
        made.append(sup)
        return sup
    yield make
    for sup in made:
        sup.close()


def pump(sup):
    """Handle every queued event, as the main loop would, until none is left."""
    while not sup.events.empty():
        sup.dispatch(sup.events.get_nowait())


def ready(sup, pid):
    sup.events.put(("reports", [("ready", pid, "")]))


def sigterm(sup):
    sup.events.put(("signal", signal.SIGTERM))


def running(make, procs, *specs, reload=None):
    """A supervisor whose children have all reported ready."""
    sup = make(*specs, reload=reload)
    sup.start()
    for pid in procs.running:
        ready(sup, pid)
    pump(sup)
    assert all(slot.state is S.RUNNING for slot in sup.slots)
    return sup


def errors(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# -- bug 1: a stop after a failed fork ----------------------------------------------

@pytest.mark.parametrize("err", [errno.EAGAIN, errno.ENOMEM])
def test_supervisor_stops_a_slot_at_once_when_its_fork_failed_and_sigterm_was_queued(
        make, procs, caplog, err):
    # Given a SIGTERM already queued when the fork of a child fails
    sup = make()
    sigterm(sup)
    procs.fail_next_fork(err)
    sup.start()
    (slot,) = sup.slots
    assert slot.pid is None
    # When the supervisor handles the SIGTERM, then the fork's failure
    pump(sup)
    # Then the slot, which has no process to signal or wait for, is stopped
    assert slot.state is S.STOPPED
    assert sup.finished
    assert procs.signals == []
    assert slot.timer is None


# -- bug 2: SIGTERM while a reload's children drain -----------------------------------

def test_supervisor_lets_a_draining_child_finish_when_sigterm_arrives_during_a_reload(
        make, procs, caplog):
    # Given a child retired by a reload, still finishing its task after SIGTERM
    sup = running(make, procs, spec(), reload=lambda: [spec(stop_timeout=9.0)])
    (old,) = sup.slots
    old_pid = old.pid
    sup.events.put(("signal", signal.SIGHUP))
    pump(sup)
    assert old.state is S.STOPPING and procs.signals == [(old_pid, signal.SIGTERM)]
    grace = old.timer
    # When the supervisor is asked to stop
    sigterm(sup)
    pump(sup)
    # Then stopping what is stopping is no error, sends nothing again, keeps its grace timer
    assert errors(caplog) == []
    assert old.state is S.STOPPING and old.timer is grace
    new = sup.slots[-1]
    assert procs.signals == [(old_pid, signal.SIGTERM), (new.pid, signal.SIGTERM)]
    # And both stop once their processes end
    procs.exit(old_pid, exited(EXIT_OK))
    procs.exit(new.pid, exited(EXIT_OK))
    pump(sup)
    assert sup.finished and sup.slots == [new]


# -- restarts, backoff, quarantine, stop, reload ---------------------------------------

def fire_timer(sup, slot):
    """The slot's backoff or quarantine timer fires now."""
    assert slot.timer is not None
    slot.timer.kill()
    sup.events.put(("timer", slot))
    pump(sup)


def test_supervisor_backs_off_and_forks_again_when_a_fork_fails(make, procs):
    sup = make()
    procs.fail_next_fork()
    sup.start()
    pump(sup)
    (slot,) = sup.slots
    assert slot.state is S.BACKOFF and slot.failures == 1 and procs.forked == []
    fire_timer(sup, slot)
    assert slot.state is S.STARTING and slot.pid == procs.forked[0]


def test_supervisor_stops_a_child_waiting_in_backoff_without_signalling_anything(make, procs):
    # Given a child that died quickly twice: it waits in BACKOFF
    sup = make()
    sup.start()
    (slot,) = sup.slots
    procs.exit(slot.pid, exited(1))     # the first quick failure: restarted at once
    pump(sup)
    fire_timer(sup, slot)
    procs.exit(slot.pid, exited(1))     # the second: a backoff
    pump(sup)
    assert slot.state is S.BACKOFF and slot.failures == 2 and slot.timer is not None
    timer = slot.timer
    # When SIGTERM arrives
    sigterm(sup)
    pump(sup)
    # Then it is stopped at once, its timer cancelled, and nothing is signalled
    assert slot.state is S.STOPPED and slot.timer is None and timer.dead
    assert procs.signals == [] and sup.finished
    sup.events.put(("timer", slot))     # a timer that fired just before the cancel
    pump(sup)
    assert slot.state is S.STOPPED and len(procs.forked) == 2


def test_supervisor_ignores_sighup_when_it_is_stopping(make, procs):
    reloads = []
    sup = running(make, procs, reload=lambda: reloads.append(1) or [spec(stop_timeout=1.0)])
    sigterm(sup)
    sup.events.put(("signal", signal.SIGHUP))
    pump(sup)
    assert reloads == [] and len(procs.forked) == 1
    assert sup.slots[0].state is S.STOPPING


def test_supervisor_kills_a_stopping_child_when_its_grace_expires_or_sigterm_comes_again(
        make, procs):
    sup = running(make, procs, spec(processes=2))
    first, second = (slot.pid for slot in sup.slots)
    sigterm(sup)
    pump(sup)
    sup.events.put(("grace_expired", sup.slots[0], first))
    pump(sup)
    assert procs.signals[-1] == (first, signal.SIGKILL)
    sigterm(sup)
    pump(sup)
    assert procs.signals[-2:] == [(first, signal.SIGKILL), (second, signal.SIGKILL)]
    for pid in (first, second):
        procs.exit(pid, signal.SIGKILL)
    pump(sup)
    assert sup.finished


def test_supervisor_quarantines_a_plugin_that_fails_to_load_and_retries_it_on_sighup(
        make, procs, caplog):
    # Given a plugin that cannot load
    sup = make(reload=lambda: [spec()])
    sup.start()
    (slot,) = sup.slots
    procs.exit(slot.pid, exited(EXIT_PLUGIN_LOAD))
    pump(sup)
    # Then its child is quarantined, and other children are untouched
    assert slot.state is S.QUARANTINED and slot.timer is not None
    assert "quarantined after exit 4 (plugin failed to load)" in caplog.text
    # When the operator reloads after installing the fix, it is tried again at once
    sup.events.put(("signal", signal.SIGHUP))
    pump(sup)
    assert slot.state is S.STARTING and slot.failures == 0 and slot.pid == procs.forked[-1]


def test_supervisor_quarantines_a_child_after_ten_quick_failures_in_a_row(make, procs):
    sup = make()
    sup.start()
    (slot,) = sup.slots
    for n in range(1, QUARANTINE_AFTER + 1):
        procs.exit(slot.pid, exited(1))
        pump(sup)
        assert slot.failures == n
        if n < QUARANTINE_AFTER:
            assert slot.state is S.BACKOFF
            fire_timer(sup, slot)
    assert slot.state is S.QUARANTINED


def test_supervisor_restarts_a_child_at_once_after_a_connection_loss_with_a_short_backoff(
        make, procs):
    sup = running(make, procs)
    (slot,) = sup.slots
    for _ in range(20):
        procs.exit(slot.pid, exited(EXIT_CONNECTION))
        pump(sup)
        assert slot.state is S.BACKOFF
        assert slot.timer_due - time.monotonic() <= RECONNECT_CAP * 1.1
        fire_timer(sup, slot)
    assert slot.failures == 20


# -- internal errors: log and go on, or stop every child gracefully --------------------

def wait_for(condition, timeout=2.0):
    """Let the supervisor's greenlet run until `condition()` holds."""
    with gevent.Timeout(timeout, AssertionError("condition not met in time")):
        while not condition():
            gevent.sleep(0.001)


def broken(*args):
    raise RuntimeError("a bug in a handler")


def test_supervisor_logs_a_failing_handler_and_goes_on_when_it_is_not_stopping(
        make, procs, caplog, monkeypatch):
    # Given a running child and a handler with a bug
    sup = running(make, procs, spec(processes=2))
    monkeypatch.setattr(sup, "handle_reports", broken)
    # When that handler fails once
    ready(sup, 999)
    pump(sup)
    # Then the traceback is logged and the healthy children stay supervised
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "internal error while handling reports" in record.getMessage()
    assert record.exc_info and "a bug in a handler" in str(record.exc_info[1])
    assert procs.signals == []
    died = sup.slots[0].pid
    procs.exit(died, signal.SIGKILL)
    pump(sup)
    assert sup.slots[0].state is S.BACKOFF and sup.slots[0].timer is not None  # restarting
    assert sup.slots[1].state is S.RUNNING


def test_supervisor_stops_every_child_gracefully_when_a_handler_fails_while_stopping(
        make, procs, monkeypatch):
    # Given two running children and a stop that goes wrong for the first of them
    sup = make(spec(processes=2))
    result = gevent.spawn(sup.supervise)
    wait_for(lambda: len(procs.running) == 2)
    for pid in procs.running:
        ready(sup, pid)
    wait_for(lambda: all(slot.state is S.RUNNING for slot in sup.slots))
    monkeypatch.setattr(sup, "enter_stopping", broken)
    # When SIGTERM arrives
    sigterm(sup)
    # Then every child still gets SIGTERM and its time to finish, and the supervisor exits 1
    wait_for(lambda: len(procs.signals) == 2)
    assert {sig for _, sig in procs.signals} == {signal.SIGTERM}
    assert not result.ready()
    for pid in procs.running:
        procs.exit(pid, exited(EXIT_OK))
    assert result.get(timeout=2) == 1
    assert {pid for pid, _ in procs.signals} == set(procs.forked)


def test_supervisor_kills_what_outlives_stop_timeout_when_it_cannot_go_on(
        make, procs, monkeypatch, caplog):
    # Given a running child, and a handler that fails at every event
    sup = make(spec(stop_timeout=0.05))
    result = gevent.spawn(sup.supervise)
    wait_for(lambda: len(procs.running) == 1)
    monkeypatch.setattr(sup, "handle_reports", broken)
    # When the errors keep coming
    for _ in range(lastresort.INTERNAL_ERRORS_TOLERATED + 1):
        ready(sup, 999)
    # Then the child gets SIGTERM, then SIGKILL after its stop_timeout, and the supervisor exits 1
    (pid,) = procs.forked
    wait_for(lambda: (pid, signal.SIGKILL) in procs.signals)
    assert procs.signals == [(pid, signal.SIGTERM), (pid, signal.SIGKILL)]
    procs.exit(pid, signal.SIGKILL)
    assert result.get(timeout=2) == 1
    assert any("cannot go on" in r.getMessage() for r in caplog.records)


def test_supervisor_stops_what_it_started_when_the_loop_itself_fails(make, procs, caplog):
    # Given a fork that fails in a way nobody expected, after a first child started
    sup = make(spec(processes=2))
    real_fork = procs.fork_and_watch
    calls = []

    def fork(callback):
        calls.append(callback)
        if len(calls) == 2:
            raise RuntimeError("not an OSError")
        return real_fork(callback)
    sup._fork = fork
    result = gevent.spawn(sup.supervise)
    # Then the child it started is stopped gracefully, and the supervisor exits 1
    wait_for(lambda: procs.signals)
    (pid,) = procs.forked
    assert procs.signals == [(pid, signal.SIGTERM)]
    procs.exit(pid, exited(EXIT_OK))
    assert result.get(timeout=2) == 1
    assert any(r.exc_info and "not an OSError" in str(r.exc_info[1]) for r in caplog.records)


# -- the exit table's users ------------------------------------------------------------

def test_child_and_metrics_name_exits_from_the_exit_table_when_a_child_explains_a_failure():
    from taskqueue.supervision import child, metrics
    from taskqueue.supervision.lifecycle import EXIT_ERROR, EXITS
    assert {code for _, code in child.EXPLAINED} | {EXIT_ERROR} <= set(EXITS)
    for code, exit in EXITS.items():
        assert metrics.exit_cause(exited(code)) == exit.cause
    assert metrics.exit_cause(exited(42)) == "exit_42"


# -- the spec says what a child is ---------------------------------------------------

def test_child_specs_mark_the_dispatcher_by_kind_when_built_from_the_config():
    from types import SimpleNamespace
    from taskqueue.cli.daemon import child_specs
    group = SimpleNamespace(name="worker2/bifh1", processes=1, user="bifh1", stop_timeout=30.0,
                            task_timeout=None, queue="worker_worker2", options={},
                            worker_type="worker2")
    cfg = SimpleNamespace(amqp="amqp", dispatcher=SimpleNamespace(processes=2, stop_timeout=30.0),
                          groups=[group], schedules=())
    specs = child_specs(cfg, dispatcher=True, workers=True)
    assert [(s.name, s.kind) for s in specs] == [("dispatcher", "dispatcher"),
                                                 ("worker2/bifh1", "worker")]


def test_child_spec_refuses_a_kind_it_does_not_know_when_built():
    with pytest.raises(ValueError, match="kind 'dispatch' is not one of"):
        ChildSpec("dispatcher", 1, target, kind="dispatch")


def test_error_budget_tolerates_a_few_errors_but_not_a_stream_of_them_within_its_window():
    now = [0.0]
    budget = lastresort.ErrorBudget(tolerated=2, window=10.0, clock=lambda: now[0])
    assert budget.spend() and budget.spend()
    assert not budget.spend()           # a third within 10 s
    now[0] = 10.5                       # the first two are out of the window
    assert budget.spend()
    now[0] = 21.0
    assert budget.spend() and budget.spend() and not budget.spend()


# -- the graveyard: a task's deaths are forgotten once it is settled ---------------

def test_a_task_s_deaths_are_forgotten_when_it_is_settled_or_arrives_afresh(make, procs):
    sup = running(make, procs, spec(processes=1))
    pid = procs.running[0]
    for key in ("m-acked", "m-given-back", "m-fresh"):
        sup.graveyard.record(key, "worker1#0 pid 1: exit 9")
    sup.events.put(("reports", [("busy", pid, "m-acked"), ("done", pid, "ack 0.1"),
                                ("busy", pid, "m-given-back"), ("done", pid, "requeue 0.1")]))
    pump(sup)
    # Settled: forgotten. Given back: it may still be the one killing processes.
    assert sup.graveyard.deaths("m-acked") == (0, None)
    assert sup.graveyard.deaths("m-given-back")[0] == 1
    # A first delivery of a key (a requeued dead letter, the same body again) starts at 0
    sup.events.put(("reports", [("busy", pid, "m-fresh first")]))
    pump(sup)
    assert sup.graveyard.deaths("m-fresh") == (0, None)
    assert sup.slots[0].task == "m-fresh"


# -- reports: each child speaks for itself, within bounds (issue 20, item 3) ---------

def test_a_child_cannot_make_the_supervisor_forget_the_deaths_of_another_queue_s_task(
        make, procs):
    # Given a task whose handling killed a child of worker1
    sup = running(make, procs, spec("worker1"), spec("echo"))
    victim, other = (slot.pid for slot in sup.slots)
    sup.events.put(("reports", [("busy", victim, "poison")]))
    pump(sup)
    procs.exit(victim, signal.SIGKILL)
    pump(sup)
    assert sup.graveyard.deaths("poison")[0] == 1
    # When a child of another queue claims it as a first delivery, then as settled
    sup.events.put(("reports", [("busy", other, "poison first"), ("done", other, "ack 0.1")]))
    pump(sup)
    # Then the deaths stay; a child of worker1 (where the task lives) still may forget them
    assert sup.graveyard.deaths("poison")[0] == 1
    new = sup.slots[0]
    sup.events.put(("timer", new))
    pump(sup)
    ready(sup, new.pid)
    sup.events.put(("reports", [("busy", new.pid, "poison"), ("done", new.pid, "ack 0.1")]))
    pump(sup)
    assert sup.graveyard.deaths("poison") == (0, None)


def test_broker_failures_a_child_reports_are_bounded(make, procs):
    # Seen on fe425d5: 5 000 made-up brokers, 5 000 entries kept for good.
    sup = running(make, procs, spec())
    pid = procs.running[0]
    sup.events.put(("reports", [("unreachable", pid, f"host{n}:5672 refused")
                                for n in range(5000)]))
    pump(sup)
    assert len(sup.broker_failures) == BROKER_FAILURES_MAX
    assert "host4999:5672" in sup.broker_failures   # the newest kept, the oldest dropped
    assert "host0:5672" not in sup.broker_failures


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def test_restarts_leak_no_report_pipe(make, procs):
    sup = running(make, procs, spec(processes=2))
    before = open_fds()
    for _ in range(100):
        slot = sup.slots[0]
        procs.exit(slot.pid, signal.SIGKILL)
        pump(sup)
        sup.events.put(("timer", slot))
        pump(sup)
        ready(sup, slot.pid)
        pump(sup)
    assert sup.slots[0].restarts == 100
    assert open_fds() == before
    sup.events.put(("signal", signal.SIGTERM))
    pump(sup)
    for pid in procs.running:
        procs.exit(pid)
    pump(sup)
    assert sup.finished
    assert open_fds() == before - 2    # the two children's pipes, closed once they are gone
