"""The Supervisor's event handling, driven event by event with a fake fork.

No process is forked: tests/unit/fakes.FakeProcesses hands out pids and
records signals, and each test feeds the supervisor the events its signal
handlers, child watchers and report pipe would (tests/integration/
test_supervisor.py and test_reload.py do the same with real processes).
"""
import errno
import logging
import signal

import pytest

from taskqueue.lifecycle import EXIT_CONNECTION, EXIT_OK, EXIT_PLUGIN_LOAD, ChildState
from taskqueue.supervisor import ChildSpec, Supervisor

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
