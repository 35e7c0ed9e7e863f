"""Rate limits' pure parts (taskqueue/protocol/ratelimits.py): the option, the bucket's
names and arguments, the repair's and the gate's decisions; the config option.
tests/integration/test_rate_limit.py drives the broker."""
import pytest

from taskqueue.errors import ConfigError
from taskqueue.host import config
from taskqueue.host.config import AmqpSettings
from taskqueue.protocol import ratelimits, topology
from taskqueue.protocol.ratelimits import Bucket, RateLimit, parse_rate_limit
from taskqueue.protocol.routing import TYPE_PATTERN


@pytest.mark.parametrize("text, count, period", [
    ("5/s", 5, 1), ("100/m", 100, 60), ("2/h", 2, 3600), (" 7 / S ", 7, 1),
    (f"{ratelimits.MAX_COUNT}/s", ratelimits.MAX_COUNT, 1)])
def test_rate_limit_reads_a_count_per_second_minute_or_hour(text, count, period):
    limit = parse_rate_limit(text)
    assert (limit.count, limit.period) == (count, period)
    assert parse_rate_limit(str(limit)) == limit


@pytest.mark.parametrize("text", [
    "", "5", "0/s", "-1/s", "5/d", "5/sec", "1.5/s", "5/s/s", "x/s", "/s", "5 per s",
    f"{ratelimits.MAX_COUNT + 1}/s", "99999999999999999999/s", "٥/s", "5/\u0455", "5/s\x00"])
def test_a_bad_rate_limit_says_what_is_expected(text):
    with pytest.raises(ValueError) as info:
        parse_rate_limit(text)
    assert str(info.value) == f"expected {ratelimits.RULE}"


def test_bucket_names_carry_the_limit_and_never_name_a_worker_queue():
    bucket = Bucket("resize", RateLimit(5, "s"))
    assert bucket.token_queue == "taskqueue.rate.5s.resize.tokens"
    assert bucket.wait_queue == "taskqueue.rate.5s.resize.wait"
    assert Bucket("resize", RateLimit(5, "m")).token_queue != bucket.token_queue
    assert Bucket("resize", RateLimit(10, "s")).token_queue != bucket.token_queue
    host = Bucket("resize", RateLimit(5, "s"), "web1")
    assert host.token_queue == "taskqueue.rate.5s.resize@web1.tokens"
    for queue in (bucket.token_queue, bucket.wait_queue, bucket.lock_queue, host.token_queue):
        assert topology.worker_type_of(queue) is None
        assert queue not in (topology.TASK_QUEUE, topology.DEAD_QUEUE)


@pytest.mark.parametrize("types", [("a", "a.5s.b"), ("a.tokens", "a"), ("x", "x.wait"),
                                   ("a.b", "a"), ("a.5s", "a")])
def test_no_two_types_share_a_queue_of_their_buckets(types):
    limit = RateLimit(5, "s")
    names = [name for worker_type in types for bucket in
             (Bucket(worker_type, limit), Bucket(worker_type, limit, "h"))
             for name in (bucket.token_queue, bucket.wait_queue, bucket.lock_queue)]
    assert len(set(names)) == len(names)


def test_a_long_type_and_host_still_get_names_within_255_bytes_one_per_scope():
    limit = RateLimit(ratelimits.MAX_COUNT, "h")
    long_type = "t" * 200
    assert TYPE_PATTERN.match(long_type)
    one, two = Bucket(long_type, limit, "h" * 63 + "1"), Bucket(long_type, limit, "h" * 63 + "2")
    for bucket in (one, two):
        for name in (bucket.token_queue, bucket.wait_queue, bucket.lock_queue):
            assert len(name.encode()) <= ratelimits.MAX_NAME
            assert name.startswith(f"{ratelimits.PREFIX}{limit.count}h.")
    assert one.token_queue != two.token_queue
    assert one.token_queue[:-len(".tokens")] == one.wait_queue[:-len(".wait")]


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
def test_the_two_queues_send_tokens_round_and_wait_queue_holds_them_one_period(queue_type):
    settings = AmqpSettings(queue_type=queue_type)
    bucket = Bucket("resize", RateLimit(5, "m"))
    tokens = ratelimits.token_arguments(bucket, settings)
    waits = ratelimits.wait_arguments(bucket, settings)
    assert tokens["x-dead-letter-routing-key"] == bucket.wait_queue
    assert waits["x-dead-letter-routing-key"] == bucket.token_queue
    assert tokens["x-dead-letter-exchange"] == waits["x-dead-letter-exchange"] == ""
    assert waits["x-message-ttl"] == 61000 and "x-message-ttl" not in tokens
    assert tokens["x-max-length"] == waits["x-max-length"] == 5
    if queue_type == "quorum":
        for args in (tokens, waits):
            assert args["x-queue-type"] == "quorum"
            assert args["x-dead-letter-strategy"] == "at-most-once"
            assert args["x-delivery-limit"] == topology.DEAD_QUEUE_DELIVERY_LIMIT
    else:
        assert "x-queue-type" not in tokens and "x-queue-type" not in waits


@pytest.mark.parametrize("counts, added", [
    ([0, 0, 0], 5), ([3, 3, 3], 2), ([3, 4, 3], 1), ([5, 5, 5], 0), ([4, 5, 4], 0),
    ([6, 7, 6], 0), ([], 0), ([4, 6, 4], 0)])
def test_a_repair_adds_only_what_every_count_misses(counts, added):
    assert ratelimits.tokens_to_add(RateLimit(5, "s"), counts) == added


@pytest.mark.parametrize("spent, extra", [(0, False), (4, False), (5, True), (9, True)])
def test_a_token_in_hand_is_extra_once_the_wait_queue_holds_the_limit(spent, extra):
    assert ratelimits.is_extra(spent, RateLimit(5, "s")) is extra


@pytest.mark.parametrize("limit, ms", [("5/s", 1100), ("1/s", 1100), ("100/m", 61000),
                                       ("2/h", 3601000)])
def test_a_spent_token_waits_a_period_and_a_tenth_of_it_at_most_a_second_more(limit, ms):
    assert ratelimits.wait_ms(parse_rate_limit(limit)) == ms


def test_only_the_token_body_is_a_token():
    assert ratelimits.is_token(ratelimits.TOKEN_BODY)
    for junk in (b"", b"x", ratelimits.TOKEN_BODY + b" ", b"\x00" * 100, None):
        assert not ratelimits.is_token(junk)


def test_a_wait_past_the_consumer_timeout_is_said():
    assert ratelimits.describe_wait(RateLimit(5, "s"), 8, 1800) is None
    warning = ratelimits.describe_wait(RateLimit(1, "h"), 2, 1800)
    assert "7200 s" in warning and "consumer timeout (1800 s)" in warning


# -- the config options ------------------------------------------------------------------

@pytest.fixture
def write(tmp_path):
    def write(text):
        path = tmp_path / "config.ini"
        path.write_text(text)
        return str(path)
    return write


def test_rate_limits_are_read_from_the_type_or_default(write):
    cfg = config.load(write("[DEFAULT]\nrate_limit: 10/m\n[a]\nrate_limit: 5/s\n"
                            "rate_limit_per_host: 2/s\n"), {"a", "b"})
    a, b = cfg.groups
    assert (a.rate_limit, a.rate_limit_per_host) == (RateLimit(5, "s"), RateLimit(2, "s"))
    assert (b.rate_limit, b.rate_limit_per_host) == (RateLimit(10, "m"), None)
    assert config.load(write("[a]\n"), {"a"}).groups[0].rate_limit is None


@pytest.mark.parametrize("option", ["rate_limit", "rate_limit_per_host"])
@pytest.mark.parametrize("value", ["0/s", "5", "5/d", "-5/s", "1e3/s", "five/s", "5/s; drop"])
def test_a_bad_rate_limit_refuses_the_config_naming_file_section_option(write, option, value):
    path = write(f"[a]\n{option}: {value}\n")
    with pytest.raises(ConfigError) as info:
        config.load(path, {"a"})
    assert str(info.value) == f"{path}: [a] {option} = {value!r}: expected {ratelimits.RULE}"


def test_subgroups_of_a_type_may_not_disagree_on_its_limit(write):
    path = write("[a]\nworkers: x, y\nrate_limit: 5/s\n[a_x]\n[a_y]\nrate_limit: 6/s\n")
    with pytest.raises(ConfigError) as info:
        config.load(path, {"a"})
    assert str(info.value) == (f"{path}: [a_y] rate_limit = '6/s': expected the same rate_limit "
                               "as [a_x] (5/s): a type has one limit, shared by its subgroups "
                               "(set it in the type's section)")
    x, y = config.load(write("[a]\nworkers: x, y\nrate_limit: 5/s\n[a_x]\n[a_y]\n"), {"a"}).groups
    assert x.rate_limit == y.rate_limit == RateLimit(5, "s")
