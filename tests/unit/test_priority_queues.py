"""Priorities (priorities.py): which queue and routing key a task's priority gives, and
the reading of a high queue's name; pure."""
import pytest

from taskqueue.protocol import onehop, priorities, topology
from taskqueue.protocol.routing import TYPE_PATTERN


@pytest.mark.parametrize("priority, high", [(None, False), (0, False), (4, False), (5, True),
                                            (9, True), (255, True), (True, False), ("9", False),
                                            (5.0, False), (-1, False)])
def test_priority_five_and_above_is_high_and_anything_but_an_integer_is_none(priority, high):
    assert priorities.is_high(priority) is high


@pytest.mark.parametrize("priority, urgency", [(None, 0), (0, 0), (7, 7), (200, 9), (-3, 0),
                                               (True, 0), ("8", 0)])
def test_urgency_is_the_priority_clamped_to_zero_to_nine(priority, urgency):
    assert priorities.urgency(priority) == urgency


@pytest.mark.parametrize("worker_type", ["resize", "b.c", "a-b_c", "x" * 200])
def test_a_type_has_a_high_queue_and_routing_key_of_its_own(worker_type):
    high = priorities.high_queue(worker_type)
    assert high == f"worker_{worker_type}+high" and len(high) <= 255   # AMQP's limit
    assert priorities.worker_queues(worker_type) == (high, topology.worker_queue(worker_type))
    assert priorities.queue_for(worker_type, 9) == high
    assert priorities.queue_for(worker_type, 4) == topology.worker_queue(worker_type)
    assert priorities.routing_key(worker_type, 5) == worker_type + "+high"
    assert priorities.routing_key(worker_type, None) == worker_type
    assert priorities.worker_type_of(high) == worker_type and priorities.is_high_queue(high)
    assert priorities.binding_key(high) == worker_type + "+high"
    assert priorities.binding_key(topology.worker_queue(worker_type)) == worker_type


@pytest.mark.parametrize("worker_type", ["resize", "b.c", "x" * 200])
def test_a_high_queue_is_no_types_own_queue_nor_its_routing_key_a_type(worker_type):
    # '+' is in no type name: no type's worker_<type> is another type's high queue.
    assert topology.worker_type_of(priorities.high_queue(worker_type)) is None
    assert not TYPE_PATTERN.match(priorities.routing_key(worker_type, 9))


@pytest.mark.parametrize("queue", ["taskqueue", "taskqueue_dead", "worker_+high", "+high",
                                   "worker_a b+high", "worker_a+high+high", "worker_a+HIGH",
                                   "worker_" + "x" * 201 + "+high", None, b"worker_a+high"])
def test_another_queue_is_no_high_queue_and_has_no_binding(queue):
    assert priorities.worker_type_of(queue) is None
    assert not priorities.is_high_queue(queue) and priorities.binding_key(queue) is None


def test_the_low_queue_reads_as_its_type_and_is_not_high():
    assert priorities.worker_type_of("worker_a") == "a" and not priorities.is_high_queue("worker_a")


def test_the_high_queue_is_bound_to_the_one_hop_exchange_by_its_own_key():
    queues = priorities.worker_queues("t")
    chain = onehop.declarations(worker_queues=[(q, priorities.binding_key(q)) for q in queues])
    assert chain.queue_bindings == (("worker_t+high", onehop.EXCHANGE, "t+high"),
                                    ("worker_t", onehop.EXCHANGE, "t"))


@pytest.mark.parametrize("bad", [-1, 10, 1.5, "5", True, [5]])
def test_a_priority_out_of_range_is_refused_saying_so(bad):
    with pytest.raises(ValueError, match="expected an integer from 0 to 9"):
        priorities.checked(bad)
