"""Task expiry's pure parts (protocol/expiry.py), and what the Client writes."""
import math

import pytest

from taskqueue.client import onehop_message
from taskqueue.protocol import expiry


@pytest.mark.parametrize("seconds", [0.001, 1, 60, expiry.MAX_SECONDS])
def test_seconds_above_0_up_to_ten_years_are_an_expiry(seconds):
    assert expiry.checked_seconds(seconds) == seconds


@pytest.mark.parametrize("seconds, why", [
    (0, "above 0"), (-1, "above 0"), (math.nan, "above 0"), (math.inf, "at most"),
    (expiry.MAX_SECONDS + 1, "at most"), (True, "expected a number"),
    ("60", "expected a number"), (None, "expected a number"), ([1], "expected a number")])
def test_anything_else_is_refused_saying_why(seconds, why):
    with pytest.raises(ValueError, match=why):
        expiry.checked_seconds(seconds)


def test_an_expiry_must_come_after_the_delay():
    assert expiry.checked_seconds(11, delay=10) == 11
    with pytest.raises(ValueError, match="expires 10 s is not after delay 10 s: the task "
                                         "would expire before it is due"):
        expiry.checked_seconds(10, delay=10)


def test_the_deadline_is_absolute_in_milliseconds_and_expired_by_says_how_long_ago():
    deadline = expiry.deadline(1.5, now=1000.0)
    assert deadline == 1_001_500
    headers = {expiry.EXPIRES_HEADER: deadline}
    assert expiry.expired_by(headers, now=1001.4) is None
    assert expiry.expired_by(headers, now=1001.75) == pytest.approx(0.25)
    assert expiry.reason(0.25) == "expired 0.250s before it could start"


@pytest.mark.parametrize("headers", [None, {}, {"other": 1}, {expiry.EXPIRES_HEADER: "x"},
                                     {expiry.EXPIRES_HEADER: True}])
def test_a_task_without_a_usable_deadline_never_expires(headers):
    # (a header that is not an integer is refused as the task comes in: inbound.refusal)
    assert expiry.expired_by(headers, now=1e12) is None


def test_the_clients_message_carries_the_deadline_and_the_priority():
    _, props = onehop_message("resize", {"a": 1}, priority=7, expires=60)
    assert props.priority == 7
    assert props.headers["worker_type"] == "resize"
    assert abs(props.headers[expiry.EXPIRES_HEADER] / 1000 - (expiry.time.time() + 60)) < 5
    _, plain = onehop_message("resize", {"a": 1})
    assert plain.priority is None and expiry.EXPIRES_HEADER not in plain.headers


@pytest.mark.parametrize("priority", [-1, 10, 1.5, True, "5"])
def test_the_client_refuses_a_priority_outside_0_to_9(priority):
    with pytest.raises(ValueError, match="expected an integer from 0 to 9"):
        onehop_message("resize", {}, priority=priority)
