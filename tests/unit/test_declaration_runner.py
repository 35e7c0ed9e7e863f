"""The declaration runner (broker/declarations.py) and the plans it runs (plans.py):
order, the fallback to an older taskqueue's arguments, what a refusal raises. The
runner's channels are a fake here (pure logic); tests/integration/test_topology.py,
test_delays.py and test_onehop.py run it on RabbitMQ."""
from types import SimpleNamespace

import pytest

from taskqueue.broker import declarations
from taskqueue.errors import TopologyError
from taskqueue.host.config import AmqpSettings
from taskqueue.protocol import delays, plans, topology


def refusal(text, code=406):
    return SimpleNamespace(reply_code=code, reply_text=text)


class Channels:
    """Channels whose broker refuses what `refuse(declaration)` says (a reason, or None)."""

    def __init__(self, refuse=lambda declaration: None, explains=True):
        self.refuse, self.explains_all = refuse, explains
        self.opened, self.calls = 0, []

    def open(self):
        self.opened += 1
        return self.opened

    def call(self, channel, declaration):
        self.calls.append((channel, declaration.kind, declaration.name, declaration.arguments))
        reason = self.refuse(declaration)
        if reason is not None:
            raise declarations.Refused(reason)
        return f"ok {declaration.name}"

    def close(self, channel):
        pass

    def explains(self, declaration, reason):
        return self.explains_all

    def failure(self, declaration, reason):
        return RuntimeError(f"{declaration.what}: {reason.reply_text}")


LEGACY = refusal("PRECONDITION_FAILED - inequivalent arg 'x-queue-leader-locator' for queue "
                 "'taskqueue' in vhost '/': received the value 'balanced' of type 'longstr' "
                 "but current is none")


def test_a_queue_an_older_taskqueue_declared_is_declared_again_without_the_newer_argument():
    channels = Channels(lambda d: LEGACY if topology.LEADER_LOCATOR in d.arguments else None)
    reply = declarations.run([plans.wanted_queue("taskqueue", AmqpSettings())], channels)
    assert reply == "ok taskqueue"
    (first, *_, wanted), (second, *_, older) = channels.calls
    assert topology.LEADER_LOCATOR in wanted and topology.LEADER_LOCATOR not in older
    assert second == first + 1       # the refusal closed the first channel


def test_any_other_refusal_of_a_queue_is_explained_as_topology_says():
    settings = AmqpSettings()
    channels = Channels(lambda d: refusal("PRECONDITION_FAILED - inequivalent arg 'x-queue-type'"))
    with pytest.raises(TopologyError) as caught:
        declarations.run([plans.wanted_queue("worker_a", settings)], channels)
    assert str(caught.value) == topology.explain_refusal(
        "worker_a", settings, refusal("PRECONDITION_FAILED - inequivalent arg 'x-queue-type'"))
    assert len(channels.calls) == 1


def test_a_refusal_the_plan_does_not_explain_is_the_channels_own_error():
    channels = Channels(lambda d: refusal("ACCESS_REFUSED", 403)
                        if d.kind == plans.EXCHANGE_BINDING else None)
    first = r"^bind taskqueue\.delay\.deliver to taskqueue\.delay\.x0: ACCESS_REFUSED$"
    with pytest.raises(RuntimeError, match=first):
        declarations.run(plans.delay_chain(AmqpSettings()), channels)


def test_a_refusal_the_channels_do_not_count_as_one_is_their_error_even_when_explained():
    channels = Channels(lambda d: refusal("NOT_FOUND", 404), explains=False)
    with pytest.raises(RuntimeError, match="declare worker_a: NOT_FOUND"):
        declarations.run([plans.wanted_queue("worker_a", AmqpSettings())], channels)


def test_the_delay_chain_is_declared_in_its_plans_order_ending_in_taskqueue():
    settings = AmqpSettings()
    channels = Channels()
    declarations.run(plans.delay_chain(settings), channels)
    chain = delays.declarations(settings, "taskqueue",
                                topology.queue_arguments("taskqueue", settings))
    assert [name for _, kind, name, _ in channels.calls] == (
        [name for name, _ in chain.exchanges] + [name for name, _ in chain.queues]
        + [name for name, _, _ in chain.queue_bindings]
        + [name for name, _, _ in chain.exchange_bindings])
    assert channels.opened == 1


def test_a_refused_level_queue_of_the_delay_chain_says_it_is_the_chains():
    reason = refusal("PRECONDITION_FAILED - inequivalent arg 'x-queue-type'")
    channels = Channels(lambda d: reason if d.name == delays.level_queue(3) else None)
    with pytest.raises(TopologyError, match=r"queue 'taskqueue\.delay\.3' of the delay chain"):
        declarations.run(plans.delay_chain(AmqpSettings()), channels)


def test_one_hop_declares_the_exchanges_then_taskqueue_then_the_bindings():
    plan = plans.one_hop(task_queue=True, worker_queues=[("worker_a", "a")],
                         settings=AmqpSettings())
    assert [(d.kind, d.name) for d in plan] == [
        (plans.EXCHANGE, "taskqueue.unrouted"), (plans.EXCHANGE, "taskqueue.direct"),
        (plans.QUEUE, "taskqueue"), (plans.QUEUE_BINDING, "taskqueue"),
        (plans.QUEUE_BINDING, "worker_a")]
    assert plan[-1].what == "bind worker_a to taskqueue.direct (routing key 'a')"
    assert plan[-1].explain(refusal("ACCESS_REFUSED", 403)) == (
        "one-hop topology: bind worker_a to taskqueue.direct (routing key 'a') refused: "
        "ACCESS_REFUSED")
