"""The hub's side of a cancel that comes while the task runs (worker._handle with
runtime/cancels.stop_task), with a fake session and the real task thread: the task is
settled once, as cancelled, whatever its thread does after; TaskCancelled reaches a
thread in Python."""
import threading
import types

import gevent
import pika

from taskqueue import worker as worker_module
from taskqueue.broker.eventlog import NoEvents
from taskqueue.errors import TaskCancelled
from taskqueue.host.config import WorkerGroup
from taskqueue.runtime import cancels as cancelling
from taskqueue.runtime.taskthread import TaskThread
from taskqueue.worker import HubCalls

from fakes import RecordingSession


class Plugin:
    """Runs in steps until told to stop; acks at the end unless cancelled first."""

    def __init__(self):
        self.running = threading.Event()
        self.interrupted = threading.Event()
        self.release = threading.Event()

    def handle_task(self, channel, method, header, body):
        self.running.set()
        try:
            while not self.release.wait(0.01):
                pass
        except TaskCancelled:
            self.interrupted.set()
            channel.basic_ack()     # too late: settled by the cancel, ignored
            raise


class Cancels(cancelling.NoCancels):
    """NoCancels whose hit the test sets; records what was settled."""

    def __init__(self):
        super().__init__()
        self.settled_keys = []

    def wait(self, result, timeout=None):
        gevent.wait([result, self.hit], count=1, timeout=timeout)

    def settled(self, key):
        self.settled_keys.append(key)


def run(plugin, cancels, when_running):
    session = RecordingSession(require_mandatory=False)
    session.delivered.append(5)
    method = pika.spec.Basic.Deliver(delivery_tag=5, routing_key="t")
    props = pika.BasicProperties(message_id="m-1")
    tasks = TaskThread("test")
    intake = types.SimpleNamespace(holds_ahead=False)

    def cancel_once_running():
        while not plugin.running.is_set():
            gevent.sleep(0.005)
        when_running()
    gevent.spawn(cancel_once_running)
    try:
        outcome, _ = worker_module._handle(plugin, WorkerGroup("t", None, 1), session,
                                           NoEvents(), HubCalls(), tasks, intake, cancels,
                                           "m-1", method, props, b"{}")
        returned = cancelling.stop_task(tasks, tasks.current, 5.0) if \
            outcome == "cancelled" else None
    finally:
        plugin.release.set()
        tasks.close()
    return outcome, returned, session


def test_a_running_task_cancelled_is_acked_once_and_its_thread_interrupted():
    plugin, cancels = Plugin(), Cancels()
    outcome, returned, session = run(plugin, cancels, cancels.hit.set)
    assert outcome == "cancelled" and returned
    assert plugin.interrupted.is_set()
    assert session.ack_frames == [(5, False)]   # the plugin's late ack never went out
    assert session.settled == {5}
    assert cancels.settled_keys == ["m-1"]


def test_a_task_the_plugin_settled_first_ends_as_the_plugin_settled_it():
    plugin, cancels = Plugin(), Cancels()

    class AckFirst(Plugin):
        def handle_task(self, channel, method, header, body):
            channel.basic_ack()
            super().handle_task(channel, method, header, body)
    plugin = AckFirst()

    def cancel_then_finish():
        cancels.hit.set()
        gevent.sleep(0.05)
        plugin.release.set()
    outcome, returned, session = run(plugin, cancels, cancel_then_finish)
    assert outcome == "ack" and returned is None
    assert not plugin.interrupted.is_set()
    assert session.ack_frames == [(5, False)] and cancels.settled_keys == []
