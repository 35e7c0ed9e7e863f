"""Task priorities: 0 (the default) to 9, and the queue each goes to. Pure.

A task's priority is its AMQP `priority` property. RabbitMQ does not order by it
alike everywhere (3.x quorum queues ignore it, a classic queue only when declared
with x-max-priority, 4.0-4.2 quorum queues know two levels, 4.3 strict 0-31), and a
queue's arguments cannot change once it exists. So priority comes from a second
queue per type: a task of priority HIGH or more goes to `worker_<type>+high`
(high_queue), the others to `worker_<type>`; a worker consumes both and always takes
a held high task first (runtime/intake.py). '+' is in no type name
(routing.TYPE_PATTERN), so no type's queue can be another's high queue.

One hop, such a task is published with the routing key `<type>+high` (routing_key),
to which only the high queue is bound, by the workers that declare it; unbound (no
worker of this version has run yet), it falls through the alternate exchange to
`taskqueue`, and the dispatcher routes it: to the high queue when it exists, else to
`worker_<type>`, so that a pool that does not consume the high queue never has
tasks stranded there by a dispatcher. Every copy keeps the `priority` property, so
a broker that orders by it orders within each queue too.
"""
from taskqueue.protocol import topology
from taskqueue.protocol.routing import TYPE_PATTERN

#: The priorities a client may give: 0 (lowest, the default) to HIGHEST.
HIGHEST = 9
#: A task of this priority or more goes to the high queue. 5, as RabbitMQ 4.0-4.2
#: quorum queues split their two levels: both ways give the same two classes.
HIGH = 5
#: What makes a worker queue's name, and its one-hop routing key, the high one's.
HIGH_SUFFIX = "+high"


def checked(priority):
    """`priority` when it is one a task may carry (None: the default, 0), else
    ValueError saying why."""
    if priority is None:
        return None
    if isinstance(priority, bool) or not isinstance(priority, int) \
            or not 0 <= priority <= HIGHEST:
        raise ValueError(f"priority {priority!r:.60}: expected an integer from 0 to {HIGHEST}")
    return priority


def is_high(priority):
    """True for a priority that goes to the high queue (a priority property as it came:
    anything but an integer counts as none)."""
    return isinstance(priority, int) and not isinstance(priority, bool) and priority >= HIGH


def urgency(priority):
    """The priority a held task is ranked by (the intake): the property clamped to 0-9,
    0 for none or anything that is no integer."""
    if not isinstance(priority, int) or isinstance(priority, bool):
        return 0
    return max(0, min(HIGHEST, priority))


def high_queue(worker_type):
    """The queue of `worker_type`'s tasks of priority HIGH or more."""
    return topology.worker_queue(worker_type) + HIGH_SUFFIX


def worker_queues(worker_type):
    """The queues a worker of `worker_type` consumes, the one it takes from first first."""
    return high_queue(worker_type), topology.worker_queue(worker_type)


def queue_for(worker_type, priority):
    """The queue a task of `worker_type` and `priority` goes to."""
    return high_queue(worker_type) if is_high(priority) else topology.worker_queue(worker_type)


def routing_key(worker_type, priority):
    """The one-hop routing key of a task of `worker_type` and `priority` (onehop.py)."""
    return worker_type + HIGH_SUFFIX if is_high(priority) else worker_type


def worker_type_of(queue):
    """The worker type whose queue `queue` is, `worker_<type>` or its high queue (the
    type a valid one), else None."""
    if isinstance(queue, str) and queue.endswith(HIGH_SUFFIX):
        worker_type = topology.worker_type_of(queue[:-len(HIGH_SUFFIX)])
        return worker_type if worker_type and TYPE_PATTERN.match(worker_type) else None
    return topology.worker_type_of(queue)


def is_high_queue(queue):
    """True for a type's high queue."""
    return worker_type_of(queue) is not None and queue.endswith(HIGH_SUFFIX)


def binding_key(queue):
    """The routing key `queue` is bound to the one-hop exchange by: its type for
    `worker_<type>`, `<type>+high` for the high queue; None for any other queue."""
    worker_type = worker_type_of(queue)
    if worker_type is None:
        return None
    return worker_type + HIGH_SUFFIX if queue.endswith(HIGH_SUFFIX) else worker_type
