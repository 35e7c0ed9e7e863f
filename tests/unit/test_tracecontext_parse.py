"""tracecontext.py: which traceparent values are read, and that nothing else is.

A publisher chooses the header: whatever it holds, parse answers a TraceParent whose
ids are lowercase hex, or None; never raises, never returns text it was given."""
import decimal
import re

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from taskqueue.broker.fielddecode import UndecodedTable
from taskqueue.protocol import tracecontext
from taskqueue.protocol.tracecontext import TraceParent, checked, parse, trace_id, usable_state

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{PARENT}-01"


def hex_digits(n):
    return st.text(alphabet="0123456789abcdef", min_size=n, max_size=n)


def test_the_recommendations_example_is_read_field_by_field():
    assert parse(VALID) == TraceParent("00", TRACE, PARENT, "01")
    assert parse(VALID).header == VALID


@pytest.mark.parametrize("value, why", [
    (None, "absent"),
    ("", "empty"),
    (VALID[:-1], "flags of one digit"),
    (VALID + "0", "version 00 with more after it"),
    (VALID + "-extra", "version 00 with a field more"),
    (f"00-{TRACE[:-1]}-{PARENT}-01", "trace id of 31 digits"),
    (f"00-{TRACE}0-{PARENT}-01", "trace id of 33 digits"),
    (f"00-{TRACE}-{PARENT[:-1]}-01", "parent id of 15 digits"),
    (f"00-{TRACE.upper()}-{PARENT}-01", "uppercase trace id"),
    (f"00-{TRACE}-{PARENT.upper()}-01", "uppercase parent id"),
    (f"00-{TRACE[:-1]}g-{PARENT}-01", "not hex"),
    (f"00-{'0' * 32}-{PARENT}-01", "all-zero trace id"),
    (f"00-{TRACE}-{'0' * 16}-01", "all-zero parent id"),
    (f"ff-{TRACE}-{PARENT}-01", "version ff"),
    (f"0-{TRACE}-{PARENT}-01", "version of one digit"),
    (f"00_{TRACE}_{PARENT}_01", "other separators"),
    (f" {VALID}", "leading space"),
    (f"{VALID}\n", "trailing newline"),
    (f"00-{TRACE[:16]}\x1b[2J{TRACE[20:]}-{PARENT}-01", "an escape sequence"),
    (f"00-{TRACE}-{PARENT}-0\n", "a newline in the flags"),
    (f"00-{'٤' * 32}-{PARENT}-01", "Unicode digits"),
    (f"01-{TRACE}-{PARENT}-01" + "-x" * 5000, "10 kB of a later version"),
    ("x" * 10_000, "10 kB of text"),
    (VALID.encode(), "bytes"),
    ({"traceparent": VALID}, "a table"),
    ([VALID], "an array"),
    (42, "a number"),
    (decimal.Decimal("1.5"), "a decimal"),
])
def test_a_value_that_is_no_valid_traceparent_is_not_read(value, why):
    assert parse(value) is None, why


def test_a_later_version_is_read_from_its_first_55_characters():
    assert parse(f"01-{TRACE}-{PARENT}-01") == TraceParent("01", TRACE, PARENT, "01")
    assert parse(f"cc-{TRACE}-{PARENT}-09-what-comes-next") == TraceParent(
        "cc", TRACE, PARENT, "09")
    assert parse(f"cc-{TRACE}-{PARENT}-09-x").header == f"00-{TRACE}-{PARENT}-09"
    assert parse(f"cc-{TRACE}-{PARENT}-09x") is None     # no dash after the flags


@given(version=hex_digits(2), trace=hex_digits(32), parent=hex_digits(16), flags=hex_digits(2))
@FAST
def test_every_well_formed_value_is_read_unless_the_recommendation_says_no(
        version, trace, parent, flags):
    answer = parse(f"{version}-{trace}-{parent}-{flags}")
    if version == "ff" or trace == "0" * 32 or parent == "0" * 16:
        assert answer is None
    else:
        assert answer == TraceParent(version, trace, parent, flags)


header_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=80),
              st.binary(max_size=80), st.decimals(allow_nan=False),
              st.builds(lambda t, p, f, tail: f"00-{t}-{p}-{f}{tail}", hex_digits(32),
                        hex_digits(16), hex_digits(2), st.text(max_size=5))),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=6)


@given(value=header_values)
@example(value=VALID + "\x00")
@example(value="00-" + "a" * 32 + "-" + "b" * 16 + "-" + "c" * 2)
@FAST
def test_whatever_a_header_holds_the_answer_is_none_or_lowercase_hex_ids(value):
    answer = parse(value)
    if answer is not None:
        assert re.fullmatch(r"[0-9a-f]{32}", answer.trace_id) and answer.trace_id != "0" * 32
        assert re.fullmatch(r"[0-9a-f]{16}", answer.parent_id) and answer.parent_id != "0" * 16
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", answer.header)
    assert trace_id({"traceparent": value}) == (answer.trace_id if answer else None)


@pytest.mark.parametrize("headers", [None, {}, [("traceparent", VALID)], "traceparent",
                                     UndecodedTable("too deep", b"\x00"),
                                     {"Traceparent": VALID}, {b"traceparent": VALID}])
def test_trace_id_reads_only_a_table_with_the_header_by_its_name(headers):
    assert trace_id(headers) is None


def test_trace_id_of_a_task():
    assert trace_id({"traceparent": VALID, "worker_type": "x"}) == TRACE


@pytest.mark.parametrize("value, usable", [
    ("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7", True),
    ("", True),
    ("a" * tracecontext.MAX_TRACESTATE, True),
    ("a" * (tracecontext.MAX_TRACESTATE + 1), False),
    ("congo=\x1b[2J", False),
    ("congo=é", False),
    (b"congo=1", False),
    ({"congo": "1"}, False),
    (None, False),
])
def test_a_tracestate_is_passed_on_only_as_short_printable_ascii(value, usable):
    assert usable_state(value) == (value if usable else None)


def test_what_an_application_gives_is_checked_with_a_sentence():
    assert checked(VALID) == {"traceparent": VALID}
    assert checked(VALID, "congo=1") == {"traceparent": VALID, "tracestate": "congo=1"}
    with pytest.raises(ValueError, match=r"traceparent '00-4BF9.*' is not a W3C traceparent: "
                                         r"expected 00-<32 hex digits>"):
        checked(VALID.upper())
    with pytest.raises(ValueError, match=r"traceparent b'00-.*' is not a W3C traceparent"):
        checked(VALID.encode())
    with pytest.raises(ValueError, match=r"^traceparent 'xxxxx.*\.\.\. is not"):
        checked("x" * 10_000)
    with pytest.raises(ValueError, match="tracestate 'a=\\\\x1b' is not a W3C tracestate"):
        checked(VALID, "a=\x1b")
    with pytest.raises(ValueError, match="a tracestate needs a traceparent"):
        checked(None, "congo=1")
