"""nacks: how often, and how far apart, a nacked publish is tried, and what the refusal says."""
import pytest

from taskqueue.broker.blocking import PublishNacked, PublishRefused
from taskqueue.protocol import nacks


def test_three_tries_within_two_seconds_then_none():
    assert nacks.TRIES == 3
    assert [nacks.delay_before_retry(tries) for tries in (1, 2, 3, 4)] == [0.5, 1.5, None, None]
    assert sum(nacks.DELAYS) <= 2
    with pytest.raises(ValueError, match="tried at least once"):
        nacks.delay_before_retry(0)


def test_the_refusal_says_how_often_and_over_how_long_it_was_tried():
    assert nacks.refused("the message for queue 'taskqueue'", 1) == (
        "the broker refused the message for queue 'taskqueue' (nack): is the queue full "
        "(max-length with reject-publish)?")
    assert "(nack; 3 tries in 2 s)" in nacks.refused("it", 3)


class Publisher:
    """Nacked the first `nacks` times, then taken."""

    def __init__(self, nacked_times):
        self.nacked_times = nacked_times
        self.calls = 0

    def __call__(self):
        self.calls += 1
        if self.calls <= self.nacked_times:
            raise PublishNacked("the message for queue 'taskqueue'")
        return "confirmed"


def test_retry_tries_again_after_each_delay_and_returns_what_the_publish_returned():
    slept, publish = [], Publisher(2)
    assert nacks.retry(publish, PublishNacked, slept.append) == "confirmed"
    assert publish.calls == 3 and slept == [0.5, 1.5]


def test_retry_gives_up_after_the_last_try_with_the_refusal_naming_the_tries():
    slept, publish = [], Publisher(10)
    with pytest.raises(PublishNacked) as info:
        nacks.retry(publish, PublishNacked, slept.append)
    assert publish.calls == 3 and slept == [0.5, 1.5]
    assert isinstance(info.value, PublishRefused)
    assert str(info.value) == ("the broker refused the message for queue 'taskqueue' "
                               "(nack; 3 tries in 2 s): is the queue full "
                               "(max-length with reject-publish)?")


def test_retry_lets_any_other_refusal_through_at_once():
    slept = []

    def returned():
        raise PublishRefused("the broker returned the message")
    with pytest.raises(PublishRefused, match="returned"):
        nacks.retry(returned, PublishNacked, slept.append)
    assert slept == []
