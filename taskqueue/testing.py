"""Running a plugin's handle_task in the test's own process, without a broker: `run_task`.

    from taskqueue.testing import run_task

    def test_echo_replies_with_the_workitem():
        result = run_task(EchoWorker, {"x": 1}, reply_to="amq.rabbitmq.reply-to")
        assert result.outcome == "ack"
        assert result.replies[0].body == b'{"x":1}'

The task goes the worker's own way (worker.py), not a copy of it: the plugin is built by
its factory for the WorkerGroup its config section gives (config.group_of_section), set
up, handed the task in a TaskThread through a TaskChannel, and what it left is settled by
worker.settle_handled, where the real worker decides what each way of leaving handle_task
comes to. Only the session is a stand-in (_Broker): it keeps what would go to the broker.
No connection, no process; the calling thread's gevent hub carries the channel's calls,
as the worker's hub does. One attempt per call: a retried task is not run again.
"""
import dataclasses
import time
from typing import Any, Optional

from taskqueue.broker import pikaparams
from taskqueue.broker.deadletters import task_key
from taskqueue.client import onehop_message
from taskqueue.errors import PluginError
from taskqueue.host import config as configuration
from taskqueue.protocol import events as task_events, onehop, replies, topology
from taskqueue.runtime import plugins
from taskqueue.runtime.taskthread import TaskThread
from taskqueue.worker import (BaseWorker, HubCalls, TaskChannel, call_handler, call_plugin_hook,
                              settle_handled)

__all__ = ["run_task", "TaskResult", "Reply", "Message", "OUTCOMES"]

#: What run_task's result.outcome may be: what the real worker does with the delivery.
#: ack: done (acked; also a task that returned without settling, or acked twice).
#: retry: put off by channel.retry() or, with max_retries, by raising: republished
#:     through the delay queues (result.delay), then acked.
#: requeue: given back to its queue by basic_nack/basic_reject with requeue=True.
#: reject: the plugin rejected or nacked it without requeue: the broker dead-letters it.
#: raised: handle_task raised and the group has no max_retries: rejected, dead-lettered
#:     by the broker (result.exception).
#: dead: taskqueue dead-lettered it itself: its retries spent, or a retry count header
#:     that holds no count (result.reason, as the dead letter's x-taskqueue-reason).
OUTCOMES = ("ack", "retry", "requeue", "reject", "raised", "dead")
#: The worker type of a plugin given as a class or factory, unless worker_type= says.
DEFAULT_TYPE = "test"
#: What stands for the config file in a bad option's message.
CONFIG_SOURCE = "run_task(config=...)"
#: The one delivery's tag.
DELIVERY_TAG = 1


@dataclasses.dataclass(frozen=True)
class Reply:
    """A message to the task's reply_to: the plugin's channel.reply(), or taskqueue's failure
    reply to a task that ended without an answer (`failure`: its reason; None for the plugin's)."""
    body: bytes
    content_type: Optional[str]
    correlation_id: Optional[str]
    failure: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Message:
    """A message published: by the plugin (basic_publish), or by the worker in place of the
    task (its retry's copy, its dead letter)."""
    exchange: str
    routing_key: str
    body: bytes
    properties: Any


@dataclasses.dataclass(frozen=True)
class TaskResult:
    """What one task came to (run_task)."""
    outcome: str                    # one of OUTCOMES
    delay: Optional[float] = None   # retry: seconds until it comes back, as the worker asked
    reason: Optional[str] = None    # the reason of its last event (events.py): why it failed,
                                    # was dead-lettered, retried or given back
    exception: Optional[BaseException] = None   # what handle_task raised, whatever the outcome
    replies: tuple = ()             # Reply, in order: what reached reply_to
    published: tuple = ()           # Message, in order: the plugin's basic_publish calls
    copies: tuple = ()              # Message: the retry's copy or the dead letter, if any
    events: tuple = ()              # the task events the worker recorded on settling (dicts)


def run_task(plugin, workitem, *, content_type=None, headers=None, reply_to=None, config=None,
             worker_type=None):
    """Run one task through `plugin` as a worker of the pool would, and return a TaskResult.

    `plugin`: a BaseWorker subclass (built by its factory), any factory (a callable taking
    the WorkerGroup and returning a worker), or the name of an installed plugin's entry
    point (loaded as the pool loads it). `workitem`: encoded as Client.submit encodes it
    (JSON), bytes sent as they are. `content_type` (default application/json), `headers`
    (added to the task's) and `reply_to` (a reply queue, such as amq.rabbitmq.reply-to,
    which Client.call uses; another name gets no reply, as with the worker): the task's
    properties. `config`: the options of the plugin's config section ({option: value};
    a number stands for what a file writes): the plugin's self.settings, and the group's
    max_retries, retry_delay, reply_queues... `worker_type`: the type it runs as
    (default: the entry point's name, else DEFAULT_TYPE).

    setup() runs before the task and teardown() after it. ConfigError for a bad `config`,
    naming the option; ValueError for a workitem Client.submit refuses; PluginError for a
    plugin that cannot be loaded, or whose setup() or teardown() raises (the worker only
    logs teardown's failure: a test should hear of it). What handle_task raises is an
    outcome, not an error. The worker's warnings (a task returned unsettled, a second ack)
    go to the `taskqueue.worker` logger, as in the pool (pytest's caplog sees them).
    A handle_task that never returns holds run_task as it would hold a worker: the
    group's task_timeout is the supervisor's, and there is none here.
    """
    worker_type = worker_type or (plugin if isinstance(plugin, str) else DEFAULT_TYPE)
    group = configuration.group_of_section(worker_type, config or {}, CONFIG_SOURCE)
    method, props, body = _delivery(worker_type, workitem, content_type, headers, reply_to)
    worker = _build(plugin, group)
    call_plugin_hook(worker, "setup", group)
    try:
        return _run(worker, group, method, props, body)
    finally:
        call_plugin_hook(worker, "teardown", group)


def _delivery(worker_type, workitem, content_type, headers, reply_to):
    """(method, properties, body) of the task as the worker receives it from a client."""
    if isinstance(workitem, (bytes, bytearray)):
        _, props = onehop_message(worker_type, None)    # its properties; the bytes as they are
        body = bytes(workitem)
    else:
        body, props = onehop_message(worker_type, workitem)
    if content_type is not None:
        props.content_type = content_type
    if headers:
        props.headers = {**(props.headers or {}), **headers}
    props.reply_to = reply_to
    # One hop's way in (onehop.py): the direct exchange, by its type.
    return pikaparams.delivery(DELIVERY_TAG, onehop.EXCHANGE, worker_type), props, body


def _build(plugin, group):
    """The plugin's worker for `group`, made as the pool makes it."""
    if isinstance(plugin, str):
        return plugins.load(plugin, group)
    factory = plugin.factory if isinstance(plugin, type) and issubclass(plugin, BaseWorker) \
        else plugin
    worker = factory(group)
    if not callable(getattr(worker, "handle_task", None)):
        raise PluginError(f"plugin {plugin!r} returned {type(worker).__name__}, which has no "
                          "handle_task method")
    return worker


def _run(worker, group, method, props, body):
    """Hand the task to the plugin in a task thread, settle it as the worker does."""
    session, recorded = _Broker(), _Events()
    tasks = TaskThread(f"task {group.worker_type}")
    hub_calls = HubCalls(before_wait=tasks.hub_needed)
    channel = TaskChannel(session, hub_calls, method.delivery_tag, props, group.reply_queues)
    watched = _Watched(worker)
    started = time.monotonic()
    try:
        error = tasks.spawn(call_handler, watched, channel, method, props, body).get()
        hub_calls.run_pending()     # what its thread queued goes first, as in the worker
        word = settle_handled(group, session, recorded, task_key(props, body), channel,
                              method, props, body, error, time.monotonic() - started)
    finally:
        hub_calls.close()
        tasks.close()
    dead = any(copy.routing_key == topology.DEAD_QUEUE for copy in session.copies)
    reasons = [event["reason"] for event in recorded.events if "reason" in event]
    return TaskResult("dead" if dead else word, delay=session.delay,
                      reason=reasons[-1] if reasons else None, exception=watched.exception,
                      replies=tuple(session.replies), published=tuple(session.published),
                      copies=tuple(session.copies), events=tuple(recorded.events))


class _Watched:
    """The plugin's worker, its handle_task's exception kept (call_handler keeps only the
    traceback's text)."""

    def __init__(self, worker):
        self.worker = worker
        self.exception = None

    def handle_task(self, channel, method, header, body):
        try:
            self.worker.handle_task(channel, method, header, body)
        except BaseException as exc:
            self.exception = exc
            raise


class _Broker:
    """Stands in for the worker's amqp.Session: keeps what would go to the broker."""

    is_open = True

    def __init__(self):
        self.settled = None     # (action, requeue) of the one delivery
        self.replies, self.published, self.copies = [], [], []
        self.delay = None       # seconds of the retry's copy

    def ack(self, delivery_tag, multiple=False):
        self._settle("ack", None)

    def nack(self, delivery_tag, multiple=False, requeue=True):
        self._settle("nack", requeue)

    def reject(self, delivery_tag, requeue=True):
        self._settle("reject", requeue)

    def _settle(self, action, requeue):
        # The broker closes a channel whose delivery is settled twice: the worker never does.
        if self.settled is not None:
            raise AssertionError(f"delivery settled twice: {self.settled[0]}, then {action}")
        self.settled = (action, requeue)

    def publish(self, routing_key, body, props, exchange="", mandatory=False):
        self.published.append(Message(exchange, routing_key, body, props))

    def reply(self, reply_to, body, props):
        self.replies.append(Reply(body, props.content_type, props.correlation_id,
                                  replies.failure_reason(props.headers)))

    def publish_confirmed(self, queue, body, props):
        self.copies.append(Message("", queue, body, props))

    def publish_delayed(self, queue, worker_type, body, props, seconds):
        self.copies.append(Message("", queue, body, props))
        self.delay = seconds


class _Events:
    """Stands in for the worker's EventLog: keeps the events it would publish."""

    def __init__(self):
        self.events = []

    def add(self, kind, task, worker_type, **fields):
        self.events.append(task_events.event(kind, task, worker_type, **fields))
