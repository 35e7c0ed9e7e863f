"""retries: when a task comes back later, and when retrying ends."""
import pytest

from taskqueue.retries import (EXPLICIT_RETRY_CAP, GiveUp, Retry, RetryPolicy, backoff_delay,
                               decide, last_line, retries_so_far)

POLICY = RetryPolicy(max_retries=3, delay=1.0, backoff=2.0, max_delay=3600.0)


@pytest.mark.parametrize("retries, expected", [(0, 1.0), (1, 2.0), (2, 4.0), (11, 2048.0),
                                               (12, 3600.0), (10**6, 3600.0)])
def test_the_backoff_doubles_from_retry_delay_up_to_retry_max_delay(retries, expected):
    assert backoff_delay(POLICY, retries) == expected


def test_jitter_only_ever_adds_a_tenth_at_most_and_never_passes_the_cap():
    assert backoff_delay(POLICY, 1, jitter=0.999) == pytest.approx(2.1998)
    assert backoff_delay(POLICY, 1, jitter=0.0) == 2.0
    assert backoff_delay(POLICY, 20, jitter=0.999) == 3600.0
    flat = RetryPolicy(max_retries=3, delay=7.0, backoff=1.0)
    assert [backoff_delay(flat, n) for n in range(4)] == [7.0] * 4


def test_a_raising_task_is_retried_with_the_backoff_until_max_retries_then_given_up():
    assert decide(POLICY, 0, explicit=False, error="ValueError: x") == Retry(1.0)
    assert decide(POLICY, 2, explicit=False, error="ValueError: x") == Retry(4.0)
    assert decide(POLICY, 3, explicit=False, error="ValueError: down") == GiveUp(
        "raised ValueError: down after 3 retries")


def test_retry_asks_for_its_own_delay_within_max_retries():
    assert decide(POLICY, 0, explicit=True, requested=2) == Retry(2.0)
    assert decide(POLICY, 1, explicit=True) == Retry(2.0)
    assert decide(POLICY, 3, explicit=True, requested=2) == GiveUp(
        "retry() asked after 3 retries: max_retries 3 reached")


def test_retry_without_max_retries_is_bounded_by_the_cap_no_hot_loop():
    none = RetryPolicy()
    assert decide(none, EXPLICIT_RETRY_CAP - 1, explicit=True) == Retry(
        backoff_delay(none, EXPLICIT_RETRY_CAP - 1))
    assert decide(none, EXPLICIT_RETRY_CAP, explicit=True) == GiveUp(
        f"retry() asked after {EXPLICIT_RETRY_CAP} retries: the cap of {EXPLICIT_RETRY_CAP} "
        "retries without max_retries reached")


@pytest.mark.parametrize("headers, expected", [(None, 0), ({}, 0), ({"x-taskqueue-retries": 2}, 2),
                                               ({"x-taskqueue-retries": "2"}, 0),
                                               ({"x-taskqueue-retries": -1}, 0),
                                               ({"x-taskqueue-retries": True}, 0)])
def test_the_retry_count_is_read_from_its_header_and_anything_odd_counts_as_none(headers, expected):
    assert retries_so_far(headers) == expected


def test_the_reason_names_the_exception_from_the_traceback():
    text = 'Traceback (most recent call last):\n  File "x", line 1\nValueError: mail server down\n'
    assert last_line(text) == "ValueError: mail server down"
    assert last_line("") == "an exception"
    assert last_line("E: " + "x" * 500).endswith("...")


@pytest.mark.parametrize("limit", [200, 10])
def test_the_reason_quotes_the_exception_cut_at_its_limit(limit):
    """A dead letter's reason quotes it: a plugin's 10 MB message must not travel whole."""
    text = "E: " + "x" * 10_000
    assert last_line(text, limit) == text[:limit] + "..."
    assert last_line(text[:limit], limit) == text[:limit]   # at the limit: whole, no "..."
    assert last_line(text) == text[:200] + "..."
    reason = decide(POLICY, 3, explicit=False, error=last_line(text)).reason
    assert reason == f"raised {text[:200]}... after 3 retries"


def test_a_raising_task_without_max_retries_is_given_up_at_once_not_given_the_retry_cap():
    """The cap of channel.retry() (EXPLICIT_RETRY_CAP) is not a budget for raising tasks:
    without max_retries, the first exception dead-letters the task."""
    none = RetryPolicy()
    assert none.max_retries == 0
    assert decide(none, 0, explicit=False, error="ValueError: x") == GiveUp(
        "raised ValueError: x after 0 retries")
    # and explicit retries still get the cap
    assert decide(none, 0, explicit=True) == Retry(backoff_delay(none, 0))
