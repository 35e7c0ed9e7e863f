"""TaskThread: a worker's tasks run in one real thread, their results come back in
the hub, whether the call returns within QUICK seconds or later.

Real threads and the real hub: what is under test is the hand-over between
them (no call lost, none delivered twice, the hub never stuck).
"""
import random
import threading
import time

import gevent
import pytest

from taskqueue.runtime import taskthread
from taskqueue.runtime.taskthread import TaskThread
from taskqueue.worker import HubCalls


@pytest.fixture
def tasks():
    thread = TaskThread("test")
    yield thread
    thread.close()


def test_a_short_call_has_returned_when_spawn_returns(tasks):
    result = tasks.spawn(lambda a, b: a + b, 2, 3)
    assert result.ready()
    assert result.get() == 5


def test_every_call_runs_in_the_same_thread_and_not_the_hubs(tasks):
    idents = {tasks.spawn(threading.get_ident).get(timeout=5) for _ in range(20)}
    assert len(idents) == 1
    assert idents != {threading.get_ident()}


def test_a_long_call_comes_back_through_the_loop_while_the_hub_goes_on(tasks):
    ticks = []

    def tick():
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0.005)
    ticker = gevent.spawn(tick)
    try:
        result = tasks.spawn(time.sleep, 0.2)
        assert not result.ready()
        assert result.get(timeout=5) is None
    finally:
        ticker.kill()
    assert len(ticks) >= 10   # the hub ran greenlets while the thread slept


def test_a_late_result_does_not_need_another_watcher_to_keep_the_loop(tasks):
    # Nothing else is pending in the hub: the async watcher must hold the loop until
    # the result arrives (else gevent raises LoopExit, "would block forever").
    result = tasks.spawn(time.sleep, taskthread.QUICK * 20)
    assert result.get(timeout=5) is None


@pytest.mark.parametrize("error", [ValueError("bad input"), SystemExit(3)])
def test_what_the_call_raises_is_raised_by_get(tasks, error):
    def fail():
        raise error
    result = tasks.spawn(fail)
    with pytest.raises(type(error)):
        result.get(timeout=5)
    assert tasks.spawn(lambda: "next").get(timeout=5) == "next"   # the thread lives on


def test_a_second_call_while_one_runs_is_refused(tasks):
    release = threading.Event()
    result = tasks.spawn(release.wait, 5)
    try:
        with pytest.raises(RuntimeError, match="still running"):
            tasks.spawn(lambda: None)
    finally:
        release.set()
    assert result.get(timeout=5) is True


def test_a_call_that_needs_the_hub_ends_the_hubs_wait_at_once(tasks, monkeypatch):
    # With a QUICK of 5 s, a task thread waiting for the hub (basic_publish, reply)
    # would take 5 s, unless hub_needed() ends the hub's wait.
    monkeypatch.setattr(taskthread, "QUICK", 5.0)
    hub_calls = HubCalls(before_wait=tasks.hub_needed)
    hub = threading.get_ident()
    started = time.monotonic()
    result = tasks.spawn(lambda: hub_calls.call(threading.get_ident, timeout=5))
    assert result.get(timeout=5) == hub
    assert time.monotonic() - started < 2


def test_calls_ending_around_quick_are_each_delivered_once(tasks):
    # Durations on both sides of QUICK, and hub_needed now and then: every race
    # between the hub's timeout and the thread's return, many times.
    rng = random.Random(7)
    hub_calls = HubCalls(before_wait=tasks.hub_needed)
    for n in range(300):
        pause = rng.choice([0, taskthread.QUICK / 2, taskthread.QUICK, taskthread.QUICK * 1.5])
        needs_hub = rng.random() < 0.2

        def call(n=n, pause=pause, needs_hub=needs_hub):
            time.sleep(pause)
            if needs_hub:
                hub_calls.call(lambda: None, timeout=5)
            return n
        with gevent.Timeout(5, AssertionError(f"call {n} ({pause}s, hub: {needs_hub}) never came back")):
            assert tasks.spawn(call).get() == n


def test_close_ends_the_thread():
    tasks = TaskThread("closing")
    tasks.spawn(lambda: None).get(timeout=5)
    tasks.close()
    tasks._thread.join(5)
    assert not tasks._thread.is_alive()
