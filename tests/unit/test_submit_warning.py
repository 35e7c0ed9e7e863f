"""submit: the warning when nothing consumes the tasks it submitted (tools.unserved_warning),
and that the check behind it never fails a submit."""
import io
from contextlib import redirect_stderr

from taskqueue.broker import blocking
from taskqueue.cli import tools
from taskqueue.errors import TaskqueueError

SERVED = (0, 2)
UNSERVED = (4, 0)


def test_no_warning_when_a_dispatcher_and_a_pool_consume():
    counts = {"taskqueue": (0, 1), "worker_t": SERVED}
    assert tools.unserved_warning("t", 1, counts) is None


def test_a_worker_queue_without_consumer_or_missing_says_where_the_tasks_wait():
    for state in (UNSERVED, None):
        counts = {"taskqueue": (0, 1), "worker_t": state}
        assert tools.unserved_warning("t", 1, counts) == (
            "no process consumes worker_t: the task waits there until a pool with plugin t runs")
    assert tools.unserved_warning("t", 3, {"taskqueue": (0, 1), "worker_t": None}) == (
        "no process consumes worker_t: the 3 tasks wait there until a pool with plugin t runs")


def test_no_dispatcher_says_the_tasks_wait_in_taskqueue_and_then_where():
    assert tools.unserved_warning("t", 1, {"taskqueue": (1, 0), "worker_t": SERVED}) == (
        "no process consumes taskqueue (no dispatcher runs): the task waits there until one does")
    assert tools.unserved_warning("t", 2, {"taskqueue": None, "worker_t": None}) == (
        "no process consumes taskqueue (no dispatcher runs): the 2 tasks wait there until one "
        "does, then in worker_t until a pool with plugin t runs")


def test_one_hop_tasks_into_a_consumed_worker_queue_need_no_dispatcher():
    # taskqueue empty, no dispatcher: the tasks went straight into worker_t
    assert tools.unserved_warning("t", 1, {"taskqueue": (0, 0), "worker_t": SERVED}) is None
    assert tools.unserved_warning("t", 1, {"taskqueue": None, "worker_t": SERVED}) is None
    assert tools.unserved_warning("t", 2, {"taskqueue": (0, 0), "worker_t": UNSERVED}) == (
        "no process consumes worker_t: the 2 tasks wait there until a pool with plugin t runs")


def test_a_broker_problem_during_the_check_is_a_warning_not_a_failure(monkeypatch):
    def broken(settings, queues, timeout):
        raise TaskqueueError("cannot connect to the broker: 127.0.0.1:5672: refused")
    monkeypatch.setattr(blocking, "queue_counts", broken)
    err = io.StringIO()
    with redirect_stderr(err):
        tools.warn_unless_served(None, "t", 1)     # returns, raises nothing
    assert err.getvalue() == ("taskqueue: warning: could not check whether a process consumes "
                              "worker_t: cannot connect to the broker: 127.0.0.1:5672: refused\n")
