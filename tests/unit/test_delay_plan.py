"""The delay chain's plan (taskqueue/protocol/delays.py): routes, declarations, and what a
message keeps of its trip. Pure: tests/integration/test_delays.py drives the broker."""
import random
import re

import pika
import pytest

from taskqueue.broker import pikaparams
from taskqueue.host.config import AmqpSettings
from taskqueue.protocol import delays, topology


def matches(pattern, key):
    """AMQP topic matching, as RabbitMQ does it: `*` one word, `#` zero or more."""
    regex = re.escape(pattern).replace(r"\*", r"[^.]+").replace(r"\#", r".*")
    return re.fullmatch(regex, key) is not None


def travel(plan, exchange, key, stop_at_first=False):
    """Follow a message through the declared chain: (the queue it ends in, the
    sum of the TTLs of the queues it waited in, in seconds); with stop_at_first, the
    first queue it enters."""
    ttls = {name: args.get("x-message-ttl") for name, args in plan.queues}
    dead_letter = {name: args.get("x-dead-letter-exchange") for name, args in plan.queues}
    kinds = dict(plan.exchanges)
    waited, hops = 0, 0
    while True:
        hops += 1
        assert hops < 100, "the chain loops"
        fanout = kinds[exchange] == "fanout"
        queues = [q for q, x, p in plan.queue_bindings if x == exchange and (fanout or matches(p, key))]
        onward = [d for d, s, p in plan.exchange_bindings if s == exchange and (fanout or matches(p, key))]
        assert len(queues) + len(onward) == 1, f"{exchange} routes {key!r} to {queues + onward}"
        if onward:
            exchange = onward[0]
            continue
        queue = queues[0]
        if stop_at_first:
            return queue
        if ttls[queue] is None:
            return queue, waited
        waited += ttls[queue] // 1000
        exchange = dead_letter[queue]


@pytest.fixture(scope="module")
def plan():
    return delays.declarations(AmqpSettings(), topology.TASK_QUEUE,
                               topology.queue_arguments(topology.TASK_QUEUE, AmqpSettings()))


def test_every_delay_from_0_to_the_longest_waits_exactly_its_whole_seconds_on_its_path():
    for seconds in range(delays.MAX_DELAY + 1):
        exchange, key = delays.route(seconds)
        if seconds == 0:
            assert exchange == delays.DELIVER_EXCHANGE
            continue
        words = key.split(".")
        assert len(words) == delays.LEVELS
        levels = [delays.LEVELS - 1 - i for i, word in enumerate(words) if word == "1"]
        assert sum(2**level for level in levels) == seconds
        assert exchange == delays.level_exchange(max(levels))   # enters where it first waits


def test_a_message_routed_through_the_declared_exchanges_and_queues_waits_its_delay(plan):
    rng = random.Random(12)
    samples = list(range(0, 3000)) + [rng.randrange(delays.MAX_DELAY + 1) for _ in range(1000)]
    samples += [2**i + d for i in range(delays.LEVELS) for d in (-1, 0, 1) if 2**i + d <= delays.MAX_DELAY]
    samples += [delays.MAX_DELAY]
    for seconds in samples:
        assert travel(plan, *delays.route(seconds)) == (topology.TASK_QUEUE, seconds), seconds


def test_first_queue_names_the_queue_a_delayed_message_enters_first(plan):
    # (the queue whose overflow nacks it: a worker's warning names it)
    samples = list(range(0, 1100)) + [2**i + d for i in range(delays.LEVELS) for d in (-1, 0, 1)
                                      if 2**i + d <= delays.MAX_DELAY]
    for seconds in samples + [0.001, 2.5, delays.MAX_DELAY]:
        entered = travel(plan, *delays.route(seconds), stop_at_first=True)
        assert delays.first_queue(seconds, topology.TASK_QUEUE) == entered, seconds
    assert delays.first_queue(0) == "taskqueue"
    assert delays.first_queue(1) == "taskqueue.delay.0"
    assert delays.first_queue(5) == "taskqueue.delay.2"
    with pytest.raises(ValueError):
        delays.first_queue(-1)


def test_a_fraction_of_a_second_is_rounded_up_never_down(plan):
    assert travel(plan, *delays.route(0.001)) == (topology.TASK_QUEUE, 1)
    assert travel(plan, *delays.route(2.5)) == (topology.TASK_QUEUE, 3)
    assert delays.route(3.0) == delays.route(3)
    assert delays.route(delays.MAX_DELAY - 0.5) == delays.route(delays.MAX_DELAY)


@pytest.mark.parametrize("seconds, words", [
    (-1, "expected a number of seconds >= 0"),
    (-0.001, "expected a number of seconds >= 0"),
    (float("nan"), "expected a number of seconds >= 0"),
    (delays.MAX_DELAY + 0.5, f"too long: at most {delays.MAX_DELAY} s (12.1 days)"),
    (float("inf"), "too long"),
    ("30", "is not a number of seconds"),
    (None, "is not a number of seconds"),
    (True, "is not a number of seconds"),
])
def test_a_delay_out_of_range_is_refused_with_a_sentence_saying_why(seconds, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        delays.route(seconds)


def test_the_longest_delay_is_at_least_seven_days():
    assert delays.MAX_DELAY >= 7 * 86400


def test_levels_are_queues_of_the_configured_type_dead_lettering_at_least_once_when_quorum():
    quorum = delays.level_arguments(3, AmqpSettings(queue_type="quorum"))
    assert quorum == {"x-message-ttl": 8000, "x-dead-letter-exchange": "taskqueue.delay.x2",
                      "x-queue-type": "quorum", "x-dead-letter-strategy": "at-least-once",
                      "x-overflow": "reject-publish"}
    classic = delays.level_arguments(0, AmqpSettings(queue_type="classic"))
    assert classic == {"x-message-ttl": 1000, "x-dead-letter-exchange": delays.DELIVER_EXCHANGE}


def test_the_chain_ends_in_taskqueue_declared_as_everyone_declares_it(plan):
    assert (topology.TASK_QUEUE, topology.queue_arguments(topology.TASK_QUEUE, AmqpSettings())) in plan.queues
    assert (topology.TASK_QUEUE, delays.DELIVER_EXCHANGE, "") in plan.queue_bindings
    assert (delays.DELIVER_EXCHANGE, "fanout") in plan.exchanges


def test_a_delayed_task_is_persistent_has_its_worker_type_and_when_it_is_due():
    props = pika.BasicProperties(message_id="m1", headers={"mine": 1})
    out = pikaparams.delayed_properties(props, "resize", 2.5, now=1000.2)
    assert out.delivery_mode == pikaparams.PERSISTENT and out.message_id == "m1"
    assert out.headers == {"mine": 1, "worker_type": "resize", delays.DELAYED_HEADER: 1004}
    assert props.headers == {"mine": 1}     # the caller's properties are not changed


def death(queue, count=1, reason="expired"):
    return {"queue": queue, "reason": reason, "count": count, "exchange": "x", "routing-keys": ["k"]}


def test_the_deaths_the_chain_added_are_dropped_and_an_earlier_real_one_kept():
    earlier = death("worker_resize", reason="rejected")
    headers = {
        delays.DELAYED_HEADER: 1004, "worker_type": "resize", "mine": "kept",
        "x-death": [death("taskqueue.delay.0"), death("taskqueue.delay.3"), earlier],
        "x-first-death-queue": "worker_resize", "x-first-death-reason": "rejected",
        "x-first-death-exchange": "x",
        "x-last-death-queue": "taskqueue.delay.0", "x-last-death-reason": "expired",
        "x-last-death-exchange": "x",
    }
    assert delays.without_chain_deaths(headers) == {
        delays.DELAYED_HEADER: 1004, "worker_type": "resize", "mine": "kept",
        "x-death": [earlier],
        "x-first-death-queue": "worker_resize", "x-first-death-reason": "rejected",
        "x-first-death-exchange": "x",
        "x-last-death-queue": "worker_resize", "x-last-death-reason": "rejected",
        "x-last-death-exchange": "x",
    }


def test_the_last_death_is_set_again_from_the_newest_real_death_left():
    """x-death is newest first: after the chain's deaths go, x-last-death-* name the newest
    real one (a rejection from worker_b), not the oldest (an expiry in worker_a)."""
    newest, oldest = death("worker_b", reason="rejected"), death("worker_a", reason="expired")
    newest["exchange"], oldest["exchange"] = "new-x", "old-x"
    headers = {delays.DELAYED_HEADER: 1004,
               "x-death": [death("taskqueue.delay.2"), newest, oldest],
               "x-first-death-queue": "worker_a", "x-first-death-reason": "expired",
               "x-first-death-exchange": "old-x",
               "x-last-death-queue": "taskqueue.delay.2", "x-last-death-reason": "expired",
               "x-last-death-exchange": "x"}
    out = delays.without_chain_deaths(headers)
    assert out["x-death"] == [newest, oldest]
    assert (out["x-last-death-queue"], out["x-last-death-reason"],
            out["x-last-death-exchange"]) == ("worker_b", "rejected", "new-x")
    assert (out["x-first-death-queue"], out["x-first-death-reason"]) == ("worker_a", "expired")
    # A field the newest death lacks is not taken from an older one
    del newest["exchange"]
    out = delays.without_chain_deaths(headers)
    assert "x-last-death-exchange" not in out and out["x-last-death-queue"] == "worker_b"


def test_a_task_that_only_went_through_the_chain_has_no_death_left():
    headers = {delays.DELAYED_HEADER: 1004, "x-death": [death(b"taskqueue.delay.1")],
               "x-first-death-queue": "taskqueue.delay.1", "x-first-death-reason": "expired",
               "x-first-death-exchange": "", "x-last-death-queue": "taskqueue.delay.1",
               "x-last-death-reason": "expired", "x-last-death-exchange": ""}
    assert delays.without_chain_deaths(headers) == {delays.DELAYED_HEADER: 1004}


def test_a_message_that_did_not_come_through_the_chain_keeps_its_deaths():
    headers = {"x-death": [death("taskqueue.delay.1")], "x-last-death-queue": "taskqueue.delay.1"}
    assert delays.without_chain_deaths(headers) is headers
