"""retries: when a task comes back later, and when retrying ends."""
import pytest

from taskqueue.protocol.retries import (EXPLICIT_RETRY_CAP, GiveUp, Retry, RetryPolicy,
                                        backoff_delay, decide, last_line)

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


# -- no policy and no header can make the decision fail ---------------------------------

import decimal
import math
from fractions import Fraction

from hypothesis import given, strategies as st

from taskqueue.protocol import delays
from taskqueue.protocol.retries import MAX_RETRY_COUNT, read_count

#: What the config accepts (config.py: retry_delay > 0, retry_backoff >= 1, retry_max_delay
#: from retry_delay to delays.MAX_DELAY; max_retries >= 0).
delays_st = st.floats(min_value=1e-6, max_value=delays.MAX_DELAY)


@st.composite
def policies(draw):
    delay = draw(delays_st)
    return RetryPolicy(max_retries=draw(st.integers(0, 10**9)), delay=delay,
                       backoff=draw(st.floats(min_value=1.0, max_value=1e308)),
                       max_delay=draw(st.floats(min_value=delay, max_value=delays.MAX_DELAY)))


@given(policies(), st.integers(0, 2**64), st.floats(0.0, 0.999))
def test_the_backoff_never_overflows_and_stays_between_retry_delay_and_the_cap(policy, n, jitter):
    seconds = backoff_delay(policy, n, jitter)
    assert policy.delay <= seconds <= policy.max_delay and math.isfinite(seconds)
    # delay x backoff^n, exactly (fractions never overflow), below the cap is what it says
    exact = Fraction(policy.delay) * Fraction(policy.backoff) ** min(n, 64)
    if n <= 64 and exact * Fraction(1 + 0.1 * jitter) < Fraction(policy.max_delay) * 0.999:
        assert seconds == pytest.approx(float(exact) * (1 + 0.1 * jitter), rel=1e-9)
    elif policy.backoff > 1 and exact > policy.max_delay:
        assert seconds == policy.max_delay


@given(policies(), st.integers(0, 10**4))
def test_the_backoff_grows_with_the_retries_and_never_shrinks(policy, n):
    assert backoff_delay(policy, n) <= backoff_delay(policy, n + 1)


def test_a_steep_backoff_with_many_retries_reaches_the_cap_instead_of_raising():
    # retry_backoff 3 and max_retries 1000: 3.0 ** 700 overflowed a float (OverflowError)
    steep = RetryPolicy(max_retries=1000, delay=1.0, backoff=3.0, max_delay=3600.0)
    assert backoff_delay(steep, 700) == 3600.0
    assert decide(steep, 700, explicit=False, error="E: x") == Retry(3600.0)
    assert decide(RetryPolicy(delay=1.0, backoff=1e300), 19, explicit=True) == Retry(3600.0)


#: Header values the broker carries (pika decodes them so): every AMQP field type.
header_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**64, 2**64) | st.floats(allow_nan=True)
    | st.text(max_size=20) | st.binary(max_size=20)
    | st.decimals(allow_nan=False, allow_infinity=False, places=3)
    | st.datetimes(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                              max_size=3),
    max_leaves=10)


@given(header_values, policies(), st.booleans())
def test_any_retry_header_gives_a_count_or_says_why_not_and_the_decision_never_fails(
        value, policy, explicit):
    count, problem = read_count({"x-taskqueue-retries": value})
    valid = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_RETRY_COUNT
    assert (count, problem is None) == ((value, True) if valid else (None, False))
    decision = decide(policy, count, explicit, error="E: x", problem=problem)
    if not valid:
        assert isinstance(decision, GiveUp) and "x-taskqueue-retries" in decision.reason


@pytest.mark.parametrize("value, shown", [
    ("3", "'3' (a string)"), (-1, "-1"), (1.5, "1.5 (a float)"), (True, "True (a boolean)"),
    ({"a": {"b": 1}}, "a table"), ([1], "an array"), (2**31, "2147483648"),
    (decimal.Decimal("2.5"), "Decimal('2.5') (a decimal)"), ("\x1b[2J" * 50, "(a string)")])
def test_a_forged_retry_count_ends_the_retries_with_a_reason_naming_it(value, shown):
    count, problem = read_count({"x-taskqueue-retries": value})
    assert count is None and shown in problem and "\x1b" not in problem and len(problem) < 200
    assert decide(POLICY, count, explicit=False, error="ValueError: x", problem=problem) == GiveUp(
        f"raised ValueError: x; not retried: {problem}")
    assert decide(POLICY, count, explicit=True, problem=problem) == GiveUp(
        f"retry() asked; not retried: {problem}")


def test_a_count_pika_decodes_as_its_64_bit_long_is_a_count():
    from pika.compat import long
    assert read_count({"x-taskqueue-retries": long(3)}) == (3, None)
    assert read_count({"x-taskqueue-retries": long(2**62)})[1].startswith(
        "its x-taskqueue-retries header is 4611686018427387904, not a retry count")


def test_no_header_is_no_retry_yet():
    assert read_count(None) == (0, None) and read_count({}) == (0, None)
    assert read_count({"x-taskqueue-retries": 7}) == (7, None)
