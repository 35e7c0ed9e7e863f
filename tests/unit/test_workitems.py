"""workitems: the one set of JSON rules for every way in (submit, submit --file, the dispatcher)."""
import io
import json
import sys

import pytest

from taskqueue.cli import bulk
from taskqueue.protocol import workitems
from taskqueue.protocol.routing import Route, route


@pytest.mark.parametrize("text, problem", [
    ("NaN", "NaN is not JSON"), ("Infinity", "Infinity is not JSON"),
    ("-Infinity", "-Infinity is not JSON"), ('{"a": [1, NaN]}', "NaN is not JSON"),
    ("1e400", "number 1e400 is too large"), ("-1e400", "number -1e400 is too large"),
    ("{oops", "Expecting property name"), ("", "Expecting value"), ("1 2", "Extra data")])
def test_parse_refuses_what_json_has_no_value_for_and_says_what(text, problem):
    with pytest.raises(ValueError, match=r"^not valid JSON \(") as error:
        workitems.parse(text)
    assert problem in str(error.value)


def test_parse_refuses_nesting_too_deep_with_a_sentence_not_a_recursion_error():
    with pytest.raises(ValueError, match="^not usable JSON: nested too deeply$"):
        workitems.parse("[" * 100_000)


@pytest.mark.parametrize("text, value", [
    ("null", None), ('"text"', "text"), ("1e300", 1e300), ("-0.5", -0.5),
    ('{"a": [1, true]}', {"a": [1, True]}), (b'"\\u00e9"', "\u00e9"),
    ('"\U0001F600"'.encode("utf-16"), "\U0001F600")])
def test_parse_reads_every_json_value_from_text_or_bytes_in_any_json_encoding(text, value):
    assert workitems.parse(text) == value


def test_loads_leaves_the_wording_to_its_caller():
    with pytest.raises(RecursionError):
        workitems.loads(b"[" * 100_000)
    with pytest.raises(UnicodeDecodeError):
        workitems.loads(b"\"\xff\"")
    with pytest.raises(ValueError, match="^NaN is not JSON$"):
        workitems.loads(b"NaN")


def test_the_envelope_is_compact_json_the_dispatcher_routes_to_the_same_workitem():
    body = workitems.envelope("t", {"a": [1, "\u00e9"]})
    assert body == b'{"worker_type":"t","workitem":{"a":[1,"\\u00e9"]}}'
    assert route(body, "application/json") == Route("t", b'{"a":[1,"\\u00e9"]}', "application/json")


def test_dumps_never_writes_nan_or_infinity():
    with pytest.raises(ValueError):
        workitems.dumps(float("nan"))
    with pytest.raises(ValueError):
        workitems.dumps([float("inf")])


def test_a_workitem_nested_as_deep_as_parse_allows_is_encoded_or_refused_never_raised():
    limit = sys.getrecursionlimit()
    for depth in range(max(0, limit - 50), limit + 20):
        text = "[" * depth + "]" * depth
        try:
            body = workitems.envelope("t", workitems.parse(text))
        except ValueError as exc:
            assert "nested too deeply" in str(exc)
        else:
            assert json.loads(body)["worker_type"] == "t"


@pytest.mark.parametrize("text", [
    "NaN", "Infinity", "-Infinity", "1e400", "[" * 100_000, "{oops", '{"a": NaN}', "1",
    '{"a": [1, 2.5, null, "x"]}', "1e308"])
def test_submit_submit_file_and_the_dispatcher_agree_on_every_workitem(text):
    """What submit takes, --file takes and the dispatcher routes; what one refuses, all do."""
    try:
        workitems.envelope("t", workitems.parse(text))
        submit_takes = True
    except ValueError:
        submit_takes = False
    tasks, _ = bulk.parse_lines(io.BytesIO(text.encode() + b"\n"), "t")
    raw = b'{"worker_type": "t", "workitem": ' + text.encode() + b"}"
    dispatcher_takes = isinstance(route(raw, "application/json"), Route)
    assert submit_takes == bool(tasks) == dispatcher_takes
    if tasks:
        # one hop: routed by its header when no worker queue took it, the body unchanged
        assert route(tasks[0].body, "application/json", {"worker_type": "t"}) == \
            Route("t", tasks[0].body)
        assert workitems.loads(tasks[0].body) == workitems.loads(text)
