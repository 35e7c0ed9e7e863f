"""Queue names and the arguments every component declares them with: one place, so
they never differ; what a broker's refusal to declare them means, in words.

Pure: no pika, no I/O. plans.py declares queues with these (broker/declarations.py
runs the plans, for the gevent Session and blocking connections alike); clients and
tools name the queues by them.
"""
import dataclasses

from taskqueue.protocol import onehop
from taskqueue.protocol.routing import TYPE_PATTERN

#: The queue clients submit envelopes to; the dispatcher consumes it.
TASK_QUEUE = "taskqueue"
#: Where everything that cannot be processed ends up, with headers saying why.
DEAD_QUEUE = "taskqueue_dead"
#: The broker's delivery limit, in units of [amqp] delivery_limit (see queue_arguments).
BROKER_LIMIT_FACTOR = 4
#: The delivery limit of taskqueue_dead (a quorum queue): none worth the name. It
#: must be explicit: RabbitMQ 4 gives a quorum queue declared without one a limit
#: of 20, and taskqueue_dead has nowhere to dead-letter to, so a dead letter
#: handed back 20 times (20 runs of `taskqueue dead list`) would be dropped.
#: (-1, RabbitMQ 4's "unlimited", drops at the first return on RabbitMQ 3.)
DEAD_QUEUE_DELIVERY_LIMIT = 10**9
#: The argument that places a quorum queue's leader (RabbitMQ >= 3.10).
LEADER_LOCATOR = "x-queue-leader-locator"
#: RabbitMQ's direct reply-to pseudo-queue: replies without declaring a queue.
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"


#: The queue types taskqueue declares its queues as ([amqp] queue_type).
QUEUE_TYPES = ("quorum", "classic")


def queue_type_choices(settings):
    """`settings`, then the same with each other queue type: what a publisher that uses
    the queues of a vhost as they are (the Client) tries in turn, when a pool configured
    with another queue_type declared them."""
    return [settings] + [dataclasses.replace(settings, queue_type=kind)
                         for kind in QUEUE_TYPES if kind != settings.queue_type]


#: Worker queues are named worker_<type>.
WORKER_QUEUE_PREFIX = "worker_"


def worker_queue(worker_type):
    return f"{WORKER_QUEUE_PREFIX}{worker_type}"


def worker_type_of(queue):
    """The worker type whose queue `queue` is (worker_<type>, the type a valid one), or
    None for another queue: the one reading of a queue name, wherever it is read."""
    if isinstance(queue, str) and queue.startswith(WORKER_QUEUE_PREFIX):
        worker_type = queue[len(WORKER_QUEUE_PREFIX):]
        if TYPE_PATTERN.match(worker_type):
            return worker_type
    return None


def queue_arguments(queue, settings):
    """The arguments every component declares `queue` with: one place, so they never differ.

    Every queue but the dead-letter queue itself dead-letters into it: a task
    rejected without requeue lands there with the broker's x-death header.
    A task that killed `delivery_limit` worker processes is dead-lettered by
    the worker that receives it next, with headers saying how they died
    (graveyard.Graveyard). Quorum queues count deliveries too, but RabbitMQ
    3 counts every return (a graceful stop, a recycle, a nack) as one: the
    broker's limit is BROKER_LIMIT_FACTOR times higher, a backstop for what no
    supervisor saw (deaths spread over hosts), with at-least-once dead-lettering.
    """
    args = {}
    if settings.queue_type == "quorum":
        # A classic queue is declared without x-queue-type, as every client does by default.
        args["x-queue-type"] = "quorum"
        # A new queue's leader goes to the node with the fewest leaders, not to the
        # node the declaring process happens to be connected to (RabbitMQ >= 3.10).
        # Queues declared without it are used as they are (legacy_arguments).
        args[LEADER_LOCATOR] = "balanced"
    if queue == DEAD_QUEUE:
        if settings.queue_type == "quorum":
            args["x-delivery-limit"] = DEAD_QUEUE_DELIVERY_LIMIT
        return args
    args.update({"x-dead-letter-exchange": "", "x-dead-letter-routing-key": DEAD_QUEUE})
    if settings.queue_type == "quorum":
        args.update({"x-delivery-limit": settings.delivery_limit * BROKER_LIMIT_FACTOR,
                     "x-dead-letter-strategy": "at-least-once",
                     "x-overflow": "reject-publish"})   # at-least-once requires it
    return args


def legacy_arguments(queue, arguments, reason):
    """`arguments` without the one the broker's refusal `reason` names, when that is
    an argument taskqueue added later, and the queue exists without it (an older
    taskqueue declared it) or the broker does not know it: such a queue is used as
    it is rather than stopping everything. None for any other refusal.

    The broker compares x-queue-leader-locator as it compares every argument of
    its queue type: a queue declared without it refuses a declare with it.
    taskqueue_dead without a delivery limit is used with a warning (LEGACY_DEAD_QUEUE).
    """
    text = getattr(reason, "reply_text", "") or ""
    tolerated = {LEADER_LOCATOR} | ({"x-delivery-limit"} if queue == DEAD_QUEUE else set())
    for name in tolerated & set(arguments):
        if (f"inequivalent arg '{name}'" in text and "current is none" in text) or \
                (name == LEADER_LOCATOR and f"invalid arg '{name}'" in text):
            return {key: value for key, value in arguments.items() if key != name}
    return None


#: What an operator reads when taskqueue_dead is an older taskqueue's.
LEGACY_DEAD_QUEUE = (
    f"{DEAD_QUEUE} was declared by an older taskqueue, without a delivery limit: on "
    "RabbitMQ 4 the broker then gives it a limit of 20, and a dead letter handed back 20 "
    "times (by `taskqueue dead list`, say) is dropped. Give it one with a policy, "
    f"`rabbitmqctl set_policy -p VHOST taskqueue-dead '^{DEAD_QUEUE}$' "
    f"'{{\"delivery-limit\": {DEAD_QUEUE_DELIVERY_LIMIT}}}' --apply-to queues`, "
    f"or recreate it when it is empty (rabbitmqctl delete_queue {DEAD_QUEUE})")


def explain_refusal(queue, settings, reason):
    """A broker's refusal to declare `queue`, as a sentence an operator can act on."""
    text = getattr(reason, "reply_text", None) or repr(reason)
    if getattr(reason, "reply_code", None) == 406:
        return (f"queue {queue!r} already exists with other arguments than taskqueue declares "
                f"({text}); taskqueue wants {queue_arguments(queue, settings)}. Set [amqp] "
                f"queue_type / delivery_limit to match the existing queue, or drain it and delete "
                f"it (rabbitmqctl delete_queue {queue}) so that it is declared anew")
    return f"queue {queue!r} cannot be declared: {text}"


def explain_delay_refusal(queue, arguments, reason):
    """A broker's refusal to declare a queue of the delay chain, as a sentence."""
    text = getattr(reason, "reply_text", None) or repr(reason)
    return (f"queue {queue!r} of the delay chain already exists with other arguments ({text}); "
            f"taskqueue wants {arguments}. Set [amqp] queue_type to match it, or, when no "
            f"delayed task waits in it, delete it (rabbitmqctl delete_queue {queue}) so that "
            f"it is declared anew")


def unroutable_onehop(worker_type):
    """Why the broker returned a one-hop task, in words."""
    return (f"the broker returned the task for {worker_type}: neither "
            f"{worker_queue(worker_type)} nor {TASK_QUEUE} took it (unroutable: {TASK_QUEUE} "
            f"does not exist or is not bound to {onehop.UNROUTED_EXCHANGE})")
