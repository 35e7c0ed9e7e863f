"""One hop for a client that names the worker type: the broker routes, no dispatcher.

A task for `worker1` is published to the direct exchange EXCHANGE with routing
key `worker1` and the header `worker_type: worker1` (docs/02-messages-and-wire-format.md,
"One hop"). Every `worker_<type>` queue is bound to EXCHANGE with routing key
`<type>` by whoever declares it (a worker as it starts, the dispatcher as it
first forwards to it), so the broker puts the task straight into it.

A type whose queue does not exist yet, or is not bound yet (a queue made by
an older taskqueue), routes nowhere in EXCHANGE: its alternate exchange,
UNROUTED_EXCHANGE (fanout), puts the task into `taskqueue`, where the
dispatcher routes it by its `worker_type` header as any other message (it
declares and binds `worker_<type>`, or dead-letters a bad type name with the
reason). Since the alternate exchange is an exchange argument, not a policy,
it works alike on RabbitMQ 3.10+ and 4.x without operator setup.

A publisher confirm with no basic.return still means "in a queue": with
`mandatory` set, RabbitMQ returns a message that neither EXCHANGE nor its
alternate exchange routed to a queue (no `taskqueue`, or it is not bound).

This module is pure: names and what to declare (plans.one_hop); broker/declarations.py
declares it.
"""
from dataclasses import dataclass

#: Clients publish one-hop tasks here, routing key = worker type.
EXCHANGE = "taskqueue.direct"
#: EXCHANGE's alternate exchange: what EXCHANGE routes nowhere goes to `taskqueue`.
UNROUTED_EXCHANGE = "taskqueue.unrouted"
#: The header that names the worker type (routing.route reads it first).
TYPE_HEADER = "worker_type"
#: EXCHANGE's arguments: every declarer must give exactly these (the broker
#: refuses a declare with another alternate-exchange, 406 PRECONDITION_FAILED).
EXCHANGE_ARGUMENTS = {"alternate-exchange": UNROUTED_EXCHANGE}


@dataclass(frozen=True)
class Declarations:
    """What to declare, in order: exchanges (name, type, arguments), then queue
    bindings (queue, exchange, routing key). Queues are declared by their owners."""
    exchanges: tuple
    queue_bindings: tuple


#: Both exchanges, the alternate one first, so that EXCHANGE never points at nothing.
EXCHANGES = ((UNROUTED_EXCHANGE, "fanout", {}), (EXCHANGE, "direct", EXCHANGE_ARGUMENTS))


def declarations(task_queue=None, worker_queues=()):
    """The exchanges, and the bindings: `task_queue` (when given) to UNROUTED_EXCHANGE,
    each (queue, worker_type) of `worker_queues` to EXCHANGE by its type."""
    bindings = []
    if task_queue:
        bindings.append((task_queue, UNROUTED_EXCHANGE, ""))
    bindings.extend((queue, EXCHANGE, worker_type) for queue, worker_type in worker_queues)
    return Declarations(EXCHANGES, tuple(bindings))


def headers(worker_type, existing=None):
    """The headers of a one-hop task: `existing` (kept) with TYPE_HEADER set."""
    out = dict(existing or {})
    out[TYPE_HEADER] = worker_type
    return out


def explain_refusal(what, reason):
    """A broker's refusal of a one-hop declaration (`what`: 'declare exchange X',
    'bind Q'), as a sentence an operator can act on."""
    text = getattr(reason, "reply_text", None) or repr(reason)
    code = getattr(reason, "reply_code", None)
    if code == 406 and what.startswith("declare exchange"):
        name = what.split()[-1]
        wanted = dict(next(args for n, _, args in EXCHANGES if n == name))
        kind = next(k for n, k, _ in EXCHANGES if n == name)
        return (f"exchange {name!r} already exists with other settings ({text}); taskqueue "
                f"wants a durable {kind} exchange with arguments {wanted}. Delete it (rabbitmqadmin "
                f"delete exchange name={name}, or the management UI) so that it is declared "
                f"anew")
    return f"one-hop topology: {what} refused: {text}"
