"""How the bench publishes a task the one-hop way: the only place that knows
the exchange's name and the routing, so aligning them with taskqueue's
docs (02-messages-and-wire-format.md, "One hop") is a change of this file only.

A one-hop task is the bare workitem (JSON here), published to EXCHANGE with
the worker type as routing key and in the `worker_type` header; the broker
routes it straight to `worker_<type>`, which the pool bound to EXCHANGE. What
no queue is bound for goes through EXCHANGE's alternate exchange to the
queue `taskqueue`, where the dispatcher reads the header (not exercised by
the bench: its queue is bound before the first publish).
"""
import pika

try:   # taskqueue with the one-hop path: its own names
    from taskqueue.protocol.onehop import EXCHANGE, UNROUTED_EXCHANGE
except ImportError:   # before it landed: the names its docs give
    #: The direct exchange clients publish to, routing key = worker type.
    EXCHANGE = "taskqueue.direct"
    #: EXCHANGE's alternate exchange (fanout, bound to the queue `taskqueue`).
    UNROUTED_EXCHANGE = "taskqueue.unrouted"


def publish(channel, worker_type, body, **props):
    """Persistent, without a confirm (as the other bench clients publish)."""
    props.setdefault("delivery_mode", 2)
    props.setdefault("content_type", "application/json")
    props["headers"] = {**props.get("headers", {}), "worker_type": worker_type}
    channel.basic_publish(EXCHANGE, worker_type, body, pika.BasicProperties(**props))


def ensure_bound(client, queue, worker_type):
    """Make sure `queue` gets what is published to EXCHANGE for `worker_type`.

    A taskqueue with the one-hop path declared EXCHANGE and bound the pool's
    queue before the pool consumed: nothing to do. An older taskqueue did
    neither: the bench declares a plain direct exchange and binds the queue
    itself, with the arguments taskqueue gives it (the broker refuses a second
    declare with others), so the one-hop rows measure the same broker path
    either way. Returns True if taskqueue had done it."""
    if client.exchange_exists(EXCHANGE):
        return True
    client.channel.exchange_declare(UNROUTED_EXCHANGE, exchange_type="fanout", durable=True)
    client.channel.exchange_declare(EXCHANGE, exchange_type="direct", durable=True,
                                    arguments={"alternate-exchange": UNROUTED_EXCHANGE})
    client.channel.queue_bind(queue, EXCHANGE, routing_key=worker_type)
    return False
