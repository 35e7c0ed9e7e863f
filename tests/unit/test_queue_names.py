"""Queue names and what they say (topology.py): the one reading of worker_<type>; pure."""
import pytest

from taskqueue.protocol import topology


@pytest.mark.parametrize("worker_type", ["resize", "b.c", "a-b_c", "x" * 200])
def test_a_worker_queue_names_its_type(worker_type):
    assert topology.worker_type_of(topology.worker_queue(worker_type)) == worker_type


@pytest.mark.parametrize("queue", ["taskqueue", "taskqueue_dead", "taskqueue.delay.3", "worker_",
                                   "worker_a b", "worker_" + "x" * 201, "workers", None,
                                   b"worker_a"])
def test_another_queue_names_no_type(queue):
    assert topology.worker_type_of(queue) is None
