"""The one-hop topology's plan (onehop.py): names, order, arguments; pure."""
from types import SimpleNamespace

from taskqueue.protocol import onehop


def test_the_alternate_exchange_is_declared_before_the_exchange_that_names_it():
    plan = onehop.declarations()
    assert plan.exchanges == (
        ("taskqueue.unrouted", "fanout", {}),
        ("taskqueue.direct", "direct", {"alternate-exchange": "taskqueue.unrouted"}))
    assert plan.queue_bindings == ()


def test_taskqueue_is_bound_to_the_alternate_exchange_and_worker_queues_by_their_type():
    plan = onehop.declarations("taskqueue", [("worker_a", "a"), ("worker_b.c", "b.c")])
    assert plan.queue_bindings == (("taskqueue", "taskqueue.unrouted", ""),
                                   ("worker_a", "taskqueue.direct", "a"),
                                   ("worker_b.c", "taskqueue.direct", "b.c"))


def test_the_headers_of_a_one_hop_task_keep_the_others_and_name_the_type():
    existing = {"trace": "x", "worker_type": "old"}
    assert onehop.headers("resize", existing) == {"trace": "x", "worker_type": "resize"}
    assert existing["worker_type"] == "old"      # a copy
    assert onehop.headers("resize") == {"worker_type": "resize"}


def test_a_refused_exchange_declare_says_what_taskqueue_wants_and_how_to_fix_it():
    reason = SimpleNamespace(reply_code=406, reply_text="PRECONDITION_FAILED - inequivalent arg "
                             "'alternate-exchange' for exchange 'taskqueue.direct'")
    text = onehop.explain_refusal("declare exchange taskqueue.direct", reason)
    assert "exchange 'taskqueue.direct' already exists with other settings" in text
    assert "inequivalent arg 'alternate-exchange'" in text
    assert "durable direct exchange with arguments {'alternate-exchange': 'taskqueue.unrouted'}" in text
    other = onehop.explain_refusal("bind worker_a to taskqueue.direct", SimpleNamespace(
        reply_code=404, reply_text="NOT_FOUND - no queue 'worker_a'"))
    assert other == ("one-hop topology: bind worker_a to taskqueue.direct refused: "
                     "NOT_FOUND - no queue 'worker_a'")
