"""What to declare, as plans: lists of declarations, in order, each saying what it
is in words and how to explain the broker's refusal of it. Pure: no pika, no I/O;
broker/declare.py runs a plan over a gevent Session or a blocking connection.

A plan is made of the pieces the protocol modules name: a queue as every component
declares it (topology.py), the delay chain (delays.py), the one-hop exchanges and
bindings (onehop.py). A queue declaration falls back to an older taskqueue's
arguments where topology.legacy_arguments allows; the runner does that.
"""
from dataclasses import dataclass, field
from typing import Callable, Optional

from taskqueue.protocol import cancels, delays, events, firings, onehop, topology

#: The kinds of declaration, named after their AMQP methods.
EXCHANGE, QUEUE, QUEUE_BINDING, EXCHANGE_BINDING = (
    "exchange_declare", "queue_declare", "queue_bind", "exchange_bind")


@dataclass(frozen=True)
class Declaration:
    """One durable exchange or queue, or one binding. `name` is the exchange or queue
    declared, or bound (the destination); `source` the exchange it is bound to.
    `explain(reason)` words the broker's refusal (TopologyError); None: the refusal
    is not the plan's to explain, the channel's own error stands."""
    kind: str
    name: str
    what: str
    arguments: dict = field(default_factory=dict)
    exchange_type: str = ""
    source: str = ""
    routing_key: str = ""
    explain: Optional[Callable] = None
    passive: bool = False   # a queue: only look whether it exists
    exclusive: bool = False  # a queue: this connection's alone, gone with it (not durable)


def exchange(name, exchange_type, arguments=None, explain=None):
    return Declaration(EXCHANGE, name, f"declare exchange {name}", dict(arguments or {}),
                       exchange_type=exchange_type, explain=explain)


def queue(name, arguments, explain):
    return Declaration(QUEUE, name, f"declare {name}", dict(arguments), explain=explain)


def queue_binding(name, source, routing_key, explain=None):
    return Declaration(QUEUE_BINDING, name, f"bind {name} to {source} (routing key "
                       f"{routing_key!r})", source=source, routing_key=routing_key,
                       explain=explain)


def exchange_binding(destination, source, routing_key):
    return Declaration(EXCHANGE_BINDING, destination, f"bind {destination} to {source}",
                       source=source, routing_key=routing_key)


def wanted_queue(name, settings):
    """`name` declared as taskqueue wants it (topology.queue_arguments); a refusal
    explained by topology.explain_refusal."""
    return queue(name, topology.queue_arguments(name, settings),
                 lambda reason: topology.explain_refusal(name, settings, reason))


def existing_queue(name):
    """A passive declare of `name`: it answers only when the queue exists (the broker
    refuses it, 404, when it does not). Its arguments are not compared."""
    return Declaration(QUEUE, name, f"look for {name}", passive=True,
                       explain=lambda reason: f"queue {name!r} does not exist")


def delay_chain(settings):
    """The delay chain (delays.declarations) ending in taskqueue. A refused queue is
    explained; a refused exchange or binding is the channel's error."""
    chain = delays.declarations(settings, topology.TASK_QUEUE,
                                topology.queue_arguments(topology.TASK_QUEUE, settings))
    plan = [exchange(name, kind) for name, kind in chain.exchanges]
    for name, arguments in chain.queues:
        if name == topology.TASK_QUEUE:
            plan.append(wanted_queue(name, settings))
        else:
            plan.append(queue(name, arguments, lambda reason, name=name, arguments=arguments:
                              topology.explain_delay_refusal(name, arguments, reason)))
    plan += [queue_binding(name, source, pattern) for name, source, pattern in chain.queue_bindings]
    plan += [exchange_binding(destination, source, pattern)
             for destination, source, pattern in chain.exchange_bindings]
    return plan


def delay_end():
    """The end of the delay chain and taskqueue's binding to it: what a dispatcher
    declares as it starts (a taskqueue declared anew has lost that binding)."""
    return [exchange(delays.DELIVER_EXCHANGE, "fanout"),
            queue_binding(topology.TASK_QUEUE, delays.DELIVER_EXCHANGE, "")]


def one_hop(task_queue=False, worker_queues=(), settings=None):
    """The one-hop exchanges, then the bindings: taskqueue to the alternate exchange
    (task_queue=True), each (queue, worker_type) of `worker_queues` to the direct
    exchange by its type. With `settings`, taskqueue is declared too, before the
    bindings; otherwise it must exist. Every refusal is explained (onehop.explain_refusal)."""
    chain = onehop.declarations(topology.TASK_QUEUE if task_queue else None, worker_queues)
    plan = [exchange(name, kind, arguments,
                     lambda reason, name=name: onehop.explain_refusal(
                         f"declare exchange {name}", reason))
            for name, kind, arguments in chain.exchanges]
    if settings is not None:
        plan.append(wanted_queue(topology.TASK_QUEUE, settings))
    for name, source, key in chain.queue_bindings:
        what = f"bind {name} to {source} (routing key {key!r})"
        plan.append(queue_binding(name, source, key,
                                  lambda reason, what=what: onehop.explain_refusal(what, reason)))
    return plan


def event_stream(settings):
    """The task events stream (events.py), with the retention and size of `settings`
    (events_retention, events_max_bytes). Its refusal is explained: the caller tells
    a stream declared otherwise, used as it is (events.kept_as_found), from the rest."""
    return [queue(events.STREAM, events.stream_arguments(settings.events_retention,
                                                         settings.events_max_bytes),
                  events.explain_refusal)]


def cancel_stream():
    """The cancels stream (cancels.py), with its fixed retention and size. Its refusal is
    explained: the caller tells a stream declared otherwise (events.kept_as_found), used
    as it is, from the rest."""
    return [queue(cancels.STREAM, cancels.stream_arguments(), cancels.explain_refusal)]


def schedule_stream():
    """The schedules stream (firings.py). Its refusal is explained; one declared otherwise
    is used as it is (events.kept_as_found)."""
    return [queue(firings.STREAM, firings.stream_arguments(), firings.explain_refusal)]


def lead_queue(name):
    """The lead queue of schedule `name` (firings.lead_queue): exclusive to the connection
    that declares it; the broker refuses it (405) while another connection holds it."""
    queue_name = firings.lead_queue(name)
    return [Declaration(QUEUE, queue_name, f"declare {queue_name}", exclusive=True,
                        explain=lambda reason: f"schedule {name!r}: the broker refused its lead "
                                               f"queue {queue_name}: "
                                               f"{getattr(reason, 'reply_text', reason)}")]


def held_elsewhere(refusal):
    """Whether a refused lead queue (its TopologyError) is held by another connection (405
    RESOURCE_LOCKED), as it is whenever another pool leads, not a refusal to say."""
    return "RESOURCE_LOCKED" in str(refusal)
