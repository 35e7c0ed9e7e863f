"""Unit tests for the pure routing decision (protocol/routing.py) and the outgoing properties.

No broker, no mocks: route() takes bytes and returns a Route or a Rejection;
format plugins are injected as formats.Format objects around plain functions;
the property helpers take and return real pika.BasicProperties objects.
"""
import decimal
import json
import random
import sys

import pika
import pytest

from taskqueue.broker.deadletters import REASON_HEADER, SOURCE_HEADER, dead_properties
from taskqueue.protocol.routing import Rejection, Route, route
from taskqueue.runtime.dispatcher import forwarded_properties
from taskqueue.runtime.formats import Format

JSON = "application/json"


def envelope(worker_type="resize", workitem=None, **extra):
    doc = {"worker_type": worker_type, "workitem": workitem, **extra}
    return json.dumps(doc).encode()


def strict_loads(data):
    """json.loads that refuses NaN/Infinity/-Infinity, as a strict JSON consumer would."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(data, parse_constant=refuse)


def assert_rejected(decision, *words):
    assert isinstance(decision, Rejection), decision
    for word in words:
        assert word.lower() in decision.reason.lower(), (word, decision.reason)


# -- route: valid envelopes --------------------------------------------------------------

WORKITEMS = [
    None,
    0,
    -17,
    3.25,
    10**30,
    True,
    "",
    "a string",
    [],
    [1, "two", None, [3.5]],
    {},
    {"src": "s3://bucket/a.png", "sizes": [64, 128], "opts": {"crop": True, "q": 0.8}},
    {"deep": {"er": {"still": [{"deeper": [None, {"x": "y"}]}]}}},
    "héllo wörld ✓ — 日本語 🚀",
    {"名前": "値", "emoji": ["😀", "\u0000", "\u2028"]},
]


@pytest.mark.parametrize("workitem", WORKITEMS, ids=repr)
def test_route_reencodes_the_workitem_when_the_envelope_is_valid(workitem):
    decision = route(envelope("resize", workitem))
    assert isinstance(decision, Route)
    assert decision.worker_type == "resize"
    assert decision.content_type == "application/json"
    assert isinstance(decision.body, bytes)
    assert json.loads(decision.body) == workitem


@pytest.mark.parametrize("workitem", WORKITEMS, ids=repr)
def test_route_emits_compact_json_when_the_envelope_is_valid(workitem):
    decision = route(envelope("resize", workitem))
    assert decision.body == json.dumps(workitem, separators=(",", ":")).encode()


def test_route_emits_compact_json_when_the_input_has_whitespace():
    body = b'{ "worker_type" : "t" ,\n  "workitem" : { "a" : [ 1 , 2 ] , "b" : null } }'
    assert route(body) == Route("t", b'{"a":[1,2],"b":null}', JSON)


def test_route_ignores_extra_envelope_keys_when_the_envelope_is_valid():
    decision = route(envelope("t", {"k": 1}, priority=5, trace="abc"))
    assert decision == Route("t", b'{"k":1}', JSON)


@pytest.mark.parametrize("body", [
    b'{"worker_type": "t", "workitem": "caf\xc3\xa9"}',
    "\ufeff".encode("utf-8") + b'{"worker_type": "t", "workitem": 1}',
    json.dumps({"worker_type": "t", "workitem": "x"}).encode("utf-16"),
    json.dumps({"worker_type": "t", "workitem": "x"}).encode("utf-32"),
], ids=["utf-8", "utf-8-bom", "utf-16", "utf-32"])
def test_route_accepts_the_envelope_when_the_body_is_in_a_json_unicode_encoding(body):
    decision = route(body)
    assert isinstance(decision, Route)
    assert decision.worker_type == "t"


@pytest.mark.parametrize("content_type", [
    None,
    "",
    "application/json",
    "application/json; charset=utf-8",
    "application/json;charset=UTF-8",
    "Application/JSON",
    " application/json ",
    "text/json",
])
def test_route_accepts_the_envelope_when_the_content_type_is_json_or_absent(content_type):
    decision = route(envelope("t", [1]), content_type=content_type)
    assert decision == Route("t", b"[1]", JSON)


@pytest.mark.parametrize("content_type", [
    "application/octet-stream",
    "application/xml",
    "application/jsonx",
    "application/vnd.api+json",
])
def test_route_rejects_the_message_when_the_content_type_is_not_json_and_there_is_no_header(
        content_type):
    decision = route(envelope("t", 1), content_type=content_type)
    assert_rejected(decision, "content type", content_type, "worker_type header")


def test_route_truncates_the_content_type_in_the_reason_when_it_is_huge():
    decision = route(envelope("t", 1), content_type="x/" + "y" * 10_000)
    assert_rejected(decision, "content type")
    assert len(decision.reason) < 300


# -- route: worker type names -----------------------------------------------------------

@pytest.mark.parametrize("worker_type", [
    "t",
    "resize",
    "Resize_Images",
    "v2.thumbnail-fast",
    "a.b_c-d.0",
    "0",
    "_",
    ".",
    "-",
    "ABCxyz0123456789_.-",
    "x" * 200,
])
def test_route_accepts_the_worker_type_when_it_is_letters_digits_underscore_dot_dash(
        worker_type):
    decision = route(envelope(worker_type, 1))
    assert decision == Route(worker_type, b"1", JSON)


@pytest.mark.parametrize("worker_type", [
    "",
    "has space",
    " lead",
    "trail ",
    "a/b",
    "/",
    "tab\there",
    "line\n",
    "new\nline",
    "colon:x",
    "star*",
    "hash#",
    "caf\u00e9",
    "日本",
    "x" * 201,
    "x" * 10_000,
], ids=lambda v: repr(v)[:40])
def test_route_rejects_the_envelope_when_the_worker_type_breaks_the_naming_rule(worker_type):
    decision = route(envelope(worker_type, 1))
    assert_rejected(decision, "worker_type", "1-200 characters")
    assert len(decision.reason) < 300


@pytest.mark.parametrize("worker_type, kind", [
    (1, "number"),
    (1.5, "number"),
    (None, "null"),
    (True, "boolean"),
    (["t"], "array"),
    ({"name": "t"}, "object"),
])
def test_route_rejects_the_envelope_when_the_worker_type_is_not_a_string(worker_type, kind):
    decision = route(envelope(worker_type, 1))
    assert_rejected(decision, "worker_type", kind, "expected a string")


def test_route_rejects_the_envelope_when_worker_type_is_missing():
    assert_rejected(route(b'{"workitem": {"a": 1}}'), "no worker_type")


def test_route_rejects_the_envelope_when_workitem_is_missing():
    assert_rejected(route(b'{"worker_type": "t"}'), "no workitem")


def test_route_rejects_the_envelope_when_it_is_an_empty_object():
    assert_rejected(route(b"{}"), "worker_type")


# -- route: bodies that are not a JSON envelope (content type application/json) ---------------

@pytest.mark.parametrize("seed", range(8))
def test_route_rejects_the_body_when_it_is_random_bytes(seed):
    body = random.Random(seed).randbytes(64)
    assert_rejected(route(body, JSON), "not JSON")


@pytest.mark.parametrize("body", [
    b"\xff\xfe\x00",
    b"\xff",
    b"\xc3\x28",
    b'{"worker_type": "t", "workitem": "\xff"}',
    b"\x80abc",
], ids=repr)
def test_route_rejects_the_body_when_it_is_not_valid_unicode(body):
    assert_rejected(route(body, JSON), "not JSON")


@pytest.mark.parametrize("body", [b"", b" ", b"\n\t "], ids=repr)
def test_route_rejects_the_body_when_it_is_empty_or_blank(body):
    assert_rejected(route(body, JSON), "not JSON")


@pytest.mark.parametrize("body", [
    b"hello",
    b"{",
    b'{"worker_type": "t", "workitem": }',
    b"{'worker_type': 't', 'workitem': 1}",
    b'{"worker_type": "t", "workitem": 1} trailing',
    b'{"worker_type": "t", "workitem": 1,}',
], ids=repr)
def test_route_rejects_the_body_when_it_is_malformed_json(body):
    assert_rejected(route(body, JSON), "not JSON")


@pytest.mark.parametrize("body, kind", [
    (b"[]", "array"),
    (b'[{"worker_type": "t", "workitem": 1}]', "array"),
    (b'"resize"', "string"),
    (b"42", "number"),
    (b"4.2", "number"),
    (b"null", "null"),
    (b"true", "boolean"),
])
def test_route_rejects_the_body_when_the_json_is_not_an_object(body, kind):
    assert_rejected(route(body, JSON), f"JSON {kind}", "expected an object")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("template", [
    '{{"worker_type": "t", "workitem": {}}}',
    '{{"worker_type": "t", "workitem": [1, {}]}}',
    '{{"worker_type": "t", "workitem": {{"x": {}}}}}',
    '{}',
])
def test_route_rejects_the_body_when_it_holds_a_nan_or_infinity_constant(template, constant):
    decision = route(template.format(constant).encode(), JSON)
    assert_rejected(decision, "not JSON", constant)


@pytest.mark.parametrize("workitem", [b"1e400", b"-1e400", b'[1, 1e999]', b'{"x": -2E+308}'],
                         ids=repr)
def test_route_never_forwards_non_standard_json_when_a_number_overflows_a_float(workitem):
    decision = route(b'{"worker_type": "t", "workitem": ' + workitem + b"}")
    if isinstance(decision, Route):
        strict_loads(decision.body)   # raises on Infinity / -Infinity
    else:
        assert_rejected(decision, "JSON")


@pytest.mark.parametrize("body", [
    b"[" * 100_000,
    b"{\"a\":" * 100_000,
    b'{"worker_type": "t", "workitem": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
], ids=["open-arrays", "open-objects", "balanced-workitem"])
def test_route_rejects_the_body_without_crashing_when_it_is_nested_too_deeply(body):
    decision = route(body, JSON)
    assert isinstance(decision, Rejection)
    assert "JSON" in decision.reason


def test_route_never_raises_when_the_workitem_nesting_approaches_the_recursion_limit():
    """Whatever depth json.loads accepts, json.dumps must manage too (no RecursionError)."""
    limit = sys.getrecursionlimit()
    for depth in range(max(0, limit - 200), limit + 20):
        body = b'{"worker_type": "t", "workitem": ' + b"[" * depth + b"]" * depth + b"}"
        decision = route(body)
        if isinstance(decision, Route):
            assert decision.body == b"[" * depth + b"]" * depth
        else:
            assert "nested too deeply" in decision.reason


# -- route: the worker_type header ---------------------------------------------------------

@pytest.mark.parametrize("body", [
    b"raw bytes, not json",
    b"\xff\xfe\x00",
    b"",
    b"[1, 2, 3]",
    envelope("other", {"a": 1}),
    b"[" * 100_000,
], ids=["text", "invalid-utf8", "empty", "json-array", "an-envelope", "deep"])
@pytest.mark.parametrize("content_type", [
    None, "application/json", "text/plain", "application/octet-stream", "image/png",
])
def test_route_forwards_the_body_unchanged_when_the_worker_type_header_is_set(body, content_type):
    decision = route(body, content_type, {"worker_type": "t"})
    assert decision == Route("t", body)
    assert decision.body is body


def test_route_prefers_the_header_when_both_header_and_envelope_name_a_type():
    body = envelope("from-envelope", 1)
    assert route(body, "application/json", {"worker_type": "from-header"}) == \
        Route("from-header", body)


def test_route_accepts_the_header_when_its_value_is_bytes():
    decision = route(b"data", "application/octet-stream", {"worker_type": b"thumbs.v2"})
    assert decision == Route("thumbs.v2", b"data")
    assert isinstance(decision.worker_type, str)


def test_route_ignores_other_headers_when_the_worker_type_header_is_absent():
    decision = route(envelope("t", 1), None, {"x-trace": "abc", "Worker_Type": "nope"})
    assert decision == Route("t", b"1", JSON)


@pytest.mark.parametrize("headers", [None, {}, {"worker_type": None}])
def test_route_reads_the_envelope_when_there_is_no_usable_header(headers):
    assert route(envelope("t", 1), None, headers) == Route("t", b"1", JSON)


@pytest.mark.parametrize("value", [
    "",
    "has space",
    "a/b",
    "x" * 201,
    b"",
    b"a b",
    b"\xff\xfe",
    "caf\u00e9".encode(),
    7,
    1.5,
    True,
    ["t"],
    {"t": 1},
    decimal.Decimal("1.5"),
], ids=repr)
def test_route_rejects_the_message_when_the_worker_type_header_is_invalid(value):
    decision = route(envelope("t", 1), "application/json", {"worker_type": value})
    assert_rejected(decision, "header", "worker_type")


def test_route_accepts_a_two_hundred_character_header_when_it_follows_the_rule():
    name = "h" * 200
    assert route(b"x", None, {"worker_type": name}) == Route(name, b"x")


# -- route: the specification's plain text, "<worker_type> <workitem>" --------------------

@pytest.mark.parametrize("content_type", [
    None, "", "text/plain", "text/plain; charset=utf-8", "Text/Plain;charset=UTF-8", " text/plain ",
])
def test_route_sends_the_text_after_the_first_space_when_the_body_is_plain_text(content_type):
    # The specification's own test client: body 'worker1 some work', no content type.
    decision = route(b"worker1 some work", content_type)
    assert decision == Route("worker1", b"some work", "text/plain")


@pytest.mark.parametrize("body, worker_type, workitem", [
    (b"worker1 ", "worker1", b""),                               # an empty workitem is one
    (b"worker1  two spaces", "worker1", b" two spaces"),        # byte for byte: nothing stripped
    (b"worker1 line\n", "worker1", b"line\n"),
    (b"w \xff\xfe\x00binary", "w", b"\xff\xfe\x00binary"),
    (b"t {\"json\": true}", "t", b'{"json": true}'),
    ("résumé café ✓".encode().join([b"a.b-c_0 ", b""]), "a.b-c_0", "résumé café ✓".encode()),
    (b"x" * 200 + b" w", "x" * 200, b"w"),
], ids=repr)
def test_route_forwards_the_workitem_byte_for_byte_when_the_body_is_plain_text(
        body, worker_type, workitem):
    assert route(body) == Route(worker_type, workitem, "text/plain")
    assert route(body, "text/plain") == Route(worker_type, workitem, "text/plain")


@pytest.mark.parametrize("body, words", [
    (b"", ["plain-text body is empty"]),
    (b"worker1", ["plain-text body 'worker1' has no space"]),
    (b"worker1\tsome\nwork", ["has no space"]),
    (b" leading-space", ["starts with a space", "worker type is empty"]),
    (b" ", ["starts with a space"]),
    (b"bad/type work", ["plain-text worker type 'bad/type'", "1-200 characters"]),
    (b"caf\xc3\xa9 work", ["plain-text worker type 'caf\u00e9'"]),
    (b"\xff\xfe\x00 x", ["plain-text worker type"]),
    (b"x" * 201 + b" w", ["plain-text worker type 'xxxx", "..."]),
    (b"[1, 2]", ["plain-text worker type '[1,'"]),
    (b'"recorder"', ["has no space"]),
    (b"42", ["has no space"]),
], ids=repr)
def test_route_rejects_plain_text_showing_the_expected_shape_when_it_is_malformed(body, words):
    for content_type in (None, "text/plain"):
        decision = route(body, content_type)
        assert_rejected(decision, *words, '"<worker_type> <workitem>"', 'e.g. "worker1 some work"')


@pytest.mark.parametrize("body", [b"x" * 10_000_000, b"bad/type " + b"y" * 10_000_000,
                                  b"\xff" * 100_000], ids=["no-space", "bad-type", "binary"])
def test_route_keeps_the_reason_short_when_a_huge_plain_text_body_is_malformed(body):
    decision = route(body)
    assert isinstance(decision, Rejection)
    assert len(decision.reason) < 300


def test_route_reads_text_plain_as_plain_text_even_when_the_body_is_an_envelope():
    # An explicit content type is not second-guessed: the "type" is '{"worker_type":'.
    decision = route(envelope("t", 1), "text/plain")
    assert_rejected(decision, "plain-text worker type", '{"worker_type":')


@pytest.mark.parametrize("seed", range(8))
def test_route_rejects_random_bytes_as_plain_text_when_there_is_no_content_type(seed):
    body = b"\x00" + random.Random(seed).randbytes(64)   # a NUL is in no worker type
    assert_rejected(route(body), "plain-text")


# -- route: which reading wins ----------------------------------------------------------

@pytest.mark.parametrize("body", [
    b'{"worker_type": "t", "workitem": 1}',
    b'  \n\t{"worker_type": "t", "workitem": 1}',
    "\ufeff".encode() + b'{"worker_type": "t", "workitem": 1}',
    "\ufeff".encode() + b' {"worker_type": "t", "workitem": 1}',
    json.dumps({"worker_type": "t", "workitem": 1}).encode("utf-16-le"),
    json.dumps({"worker_type": "t", "workitem": 1}).encode("utf-32"),
], ids=["plain", "leading-blanks", "bom", "bom-blank", "utf-16-le", "utf-32"])
def test_route_reads_an_envelope_when_there_is_no_content_type_and_the_body_starts_with_a_brace(
        body):
    assert route(body) == Route("t", b"1", JSON)


@pytest.mark.parametrize("body", [b"{not json at all", b"{}", b" {"], ids=repr)
def test_route_rejects_as_json_when_there_is_no_content_type_and_the_body_starts_with_a_brace(
        body):
    assert_rejected(route(body), "JSON" if body != b"{}" else "worker_type")


def test_route_does_not_sniff_when_the_content_type_says_json():
    assert_rejected(route(b"worker1 some work", JSON), "not JSON")
    assert_rejected(route(b"worker1 some work", "text/json"), "not JSON")


def test_route_prefers_the_header_to_every_reading_of_the_body():
    readers = formats_of(good_format)
    for body, content_type in [(b"worker1 some work", None), (b"worker1 some work", "text/plain"),
                               (envelope("other", 1), JSON), (b"w", GOOD_TYPE)]:
        assert route(body, content_type, {"worker_type": "h"}, readers) == Route("h", body)


def test_route_rejects_an_unknown_content_type_naming_what_it_understands():
    decision = route(b"worker1 some work", "application/xml", None, formats_of(good_format))
    assert_rejected(decision, "'application/xml' is not understood", "text/plain",
                    "application/json", GOOD_TYPE, "worker_type header")


def test_route_never_lets_a_format_plugin_take_a_built_in_content_type():
    readers = {"text/plain": Format("text/plain", "evil:read", read=lambda body: ("evil", b""))}
    assert route(b"worker1 some work", "text/plain", None, readers) == \
        Route("worker1", b"some work", "text/plain")


# -- route: format plugins --------------------------------------------------------------

GOOD_TYPE = "application/x-tqtest+json"


def good_format(body):
    doc = json.loads(body)
    return doc["step"], json.dumps(doc["data"]).encode()


def formats_of(read, content_type=GOOD_TYPE, problem=None):
    return {content_type: Format(content_type, "tqtest.formats:read from tqtest 0.1",
                                 read=read, problem=problem)}


@pytest.mark.parametrize("content_type", [GOOD_TYPE, "Application/X-TQTest+JSON; charset=utf-8"])
def test_route_asks_the_format_plugin_of_the_content_type_and_keeps_the_content_type(
        content_type):
    body = b'{"step": "resize", "data": {"w": 64}}'
    decision = route(body, content_type, None, formats_of(good_format))
    assert decision == Route("resize", b'{"w": 64}')   # None: the input's content type is kept


@pytest.mark.parametrize("answer", [b"bytes", bytearray(b"bytes"), memoryview(b"bytes")],
                         ids=["bytes", "bytearray", "memoryview"])
def test_route_takes_any_bytes_like_workitem_from_a_format_plugin(answer):
    decision = route(b"", GOOD_TYPE, None, formats_of(lambda body: ["t", answer]))
    assert decision == Route("t", b"bytes") and type(decision.body) is bytes


@pytest.mark.parametrize("error", [ValueError("no step in it"), KeyError("step"),
                                   RecursionError("deep"), SystemExit(3)], ids=repr)
def test_route_rejects_naming_the_format_when_the_plugin_raises(error):
    def read(body):
        raise error
    decision = route(b"{}", GOOD_TYPE, None, formats_of(read))
    assert_rejected(decision, f"format {GOOD_TYPE}", "tqtest.formats:read", "refused the body",
                    type(error).__name__)


def test_route_cuts_a_huge_worker_type_a_format_plugin_returned_short():
    decision = route(b"{}", GOOD_TYPE, None, formats_of(lambda body: ("t/" * 50_000, b"x")))
    assert_rejected(decision, "returned worker type 't/t/", "1-200 characters")
    assert len(decision.reason) < 300, len(decision.reason)


def test_route_cuts_a_format_plugins_huge_error_message_short():
    def read(body):
        raise ValueError(body.decode())
    decision = route(b"x" * 100_000, GOOD_TYPE, None, formats_of(read))
    assert_rejected(decision, "refused the body")
    assert len(decision.reason) < 400


@pytest.mark.parametrize("answer, words", [
    (None, ["returned NoneType", "expected (worker_type, workitem bytes)"]),
    ("t", ["returned str"]),
    (("t",), ["returned tuple"]),
    (("t", b"x", "extra"), ["returned tuple"]),
    ((b"t", b"x"), ["worker type a bytes"]),
    ((7, b"x"), ["worker type a int"]),
    (("a/b", b"x"), ["worker type 'a/b'", "1-200 characters"]),
    (("", b"x"), ["worker type ''"]),
    (("t", "text"), ["a str workitem, expected bytes"]),
    (("t", None), ["a NoneType workitem"]),
], ids=repr)
def test_route_rejects_naming_the_format_when_the_plugin_returns_the_wrong_shape(answer, words):
    decision = route(b"{}", GOOD_TYPE, None, formats_of(lambda body: answer))
    assert_rejected(decision, f"format {GOOD_TYPE}", *words)


def test_route_rejects_with_the_load_failure_when_the_format_plugin_could_not_load():
    problem = f"format {GOOD_TYPE} (tqtest.missing:read) failed to load: ImportError: nope"
    decision = route(b"{}", GOOD_TYPE, None, formats_of(None, problem=problem))
    assert decision == Rejection(problem)


def test_route_leaves_other_messages_alone_when_a_format_plugin_is_broken():
    readers = {**formats_of(None, problem="broken"), **formats_of(good_format, "application/x-ok")}
    assert route(b"worker1 some work", None, None, readers) == \
        Route("worker1", b"some work", "text/plain")
    assert route(envelope("t", 1), JSON, None, readers) == Route("t", b"1", JSON)
    assert route(b'{"step": "s", "data": 1}', "application/x-ok", None, readers) == Route("s", b"1")
    assert_rejected(route(b"{}", GOOD_TYPE, None, readers), "broken")


def test_route_does_not_list_a_broken_format_among_the_understood_content_types():
    decision = route(b"x", "application/xml", None, formats_of(None, problem="broken"))
    assert GOOD_TYPE not in decision.reason


# -- forwarded_properties -------------------------------------------------------------

def input_properties(**overrides):
    values = dict(
        content_type="text/plain",
        delivery_mode=1,
        message_id="msg-1",
        correlation_id="corr-1",
        reply_to="amq.rabbitmq.reply-to",
        headers={"x-trace": "abc", "attempt": 2, "nested": {"k": "v"}},
    )
    values.update(overrides)
    return pika.BasicProperties(**values)


ENVELOPE_ROUTE = Route("t", b"{}", JSON)
HEADER_ROUTE = Route("t", b"raw")
PLAIN_ROUTE = Route("t", b"some work", "text/plain")


@pytest.mark.parametrize("decision", [ENVELOPE_ROUTE, HEADER_ROUTE], ids=["envelope", "header"])
@pytest.mark.parametrize("delivery_mode", [None, 1, 2])
def test_forwarded_properties_are_persistent_when_the_input_was_not(decision, delivery_mode):
    out = forwarded_properties(input_properties(delivery_mode=delivery_mode), decision)
    assert out.delivery_mode == 2


@pytest.mark.parametrize("decision", [ENVELOPE_ROUTE, HEADER_ROUTE, PLAIN_ROUTE],
                         ids=["envelope", "header", "plain"])
def test_forwarded_properties_keep_the_identity_of_the_input_when_routed(decision):
    props = input_properties()
    out = forwarded_properties(props, decision)
    assert out.message_id == "msg-1"
    assert out.correlation_id == "corr-1"
    assert out.reply_to == "amq.rabbitmq.reply-to"
    assert out.headers == {"x-trace": "abc", "attempt": 2, "nested": {"k": "v"}}
    assert out is not props


def test_forwarded_properties_say_application_json_when_the_body_was_reencoded():
    out = forwarded_properties(input_properties(content_type="text/plain"), ENVELOPE_ROUTE)
    assert out.content_type == "application/json"


@pytest.mark.parametrize("content_type", [None, "application/json", "text/plain; charset=utf-8"])
def test_forwarded_properties_say_text_plain_when_the_workitem_came_as_plain_text(content_type):
    out = forwarded_properties(input_properties(content_type=content_type), PLAIN_ROUTE)
    assert out.content_type == "text/plain"


@pytest.mark.parametrize("content_type", [None, "text/plain", "image/png"])
def test_forwarded_properties_keep_the_content_type_when_the_body_is_forwarded_unchanged(
        content_type):
    out = forwarded_properties(input_properties(content_type=content_type), HEADER_ROUTE)
    assert out.content_type == content_type


def test_forwarded_properties_leave_the_input_untouched_when_routed():
    headers = {"ratio": 0.5, "nested": {"f": 1.25}, "list": [2.5]}
    props = input_properties(delivery_mode=1, content_type="text/plain", headers=headers)
    forwarded_properties(props, ENVELOPE_ROUTE)
    assert props.delivery_mode == 1
    assert props.content_type == "text/plain"
    assert props.headers is headers
    assert headers == {"ratio": 0.5, "nested": {"f": 1.25}, "list": [2.5]}
    assert isinstance(headers["ratio"], float)


@pytest.mark.parametrize("headers", [None, {}])
def test_forwarded_properties_encode_when_there_are_no_headers(headers):
    out = forwarded_properties(input_properties(headers=headers), ENVELOPE_ROUTE)
    assert not out.headers
    out.encode()


def test_forwarded_properties_convert_float_headers_to_decimal_when_forwarding():
    headers = {"ratio": 0.5, "nested": {"f": 1.25}, "list": [2.5, "s", 3], "n": 7, "s": "x"}
    out = forwarded_properties(input_properties(headers=headers), HEADER_ROUTE)
    assert out.headers["ratio"] == decimal.Decimal("0.5")
    assert isinstance(out.headers["ratio"], decimal.Decimal)
    assert out.headers["nested"]["f"] == decimal.Decimal("1.25")
    assert out.headers["list"] == [decimal.Decimal("2.5"), "s", 3]
    assert out.headers["n"] == 7 and out.headers["s"] == "x"


def test_pika_refuses_float_headers_when_they_are_not_converted():
    """Why the conversion exists: pika decodes floats but cannot encode them."""
    with pytest.raises(Exception):
        pika.BasicProperties(headers={"ratio": 0.5}).encode()


def received(props):
    """What a consumer of `props` gets: encoded as pika sends them, decoded as pika reads
    them (text as str: pika 1.2 gives a long string as bytes)."""
    encoded = props.encode()
    out = pika.BasicProperties()
    out.decode(b"".join(encoded) if isinstance(encoded, list) else encoded)

    def text(value):
        if isinstance(value, bytes):
            return value.decode()
        if isinstance(value, dict):
            return {k: text(v) for k, v in value.items()}
        if isinstance(value, list):
            return [text(v) for v in value]
        return value
    return text(out.headers)


@pytest.mark.parametrize("value", [0.5, 1.25, -0.5, 2.0, 0.001, 1e-7, 100.75])
def test_forwarded_properties_carry_short_floats_as_the_same_number(value):
    headers = {"v": value, "nested": {"v": value}, "list": [value]}
    for decision in (ENVELOPE_ROUTE, HEADER_ROUTE):
        got = received(forwarded_properties(input_properties(headers=headers), decision))
        for forwarded in (got["v"], got["nested"]["v"], got["list"][0]):
            assert isinstance(forwarded, decimal.Decimal) and float(forwarded) == value, got


@pytest.mark.parametrize("value", [
    1700000000.123,            # a float Unix timestamp, the common case
    3.141592653589793,
    1e20,
    -2.5e-300,
    float("nan"),
    float("inf"),
    float("-inf"),
], ids=repr)
def test_forwarded_properties_carry_any_other_float_as_its_repr(value):
    # Beyond what an AMQP decimal holds: the float's repr() as text, never dropped (None)
    headers = {"v": value, "nested": {"v": value}, "list": [value, 1]}
    got = received(forwarded_properties(input_properties(headers=headers), HEADER_ROUTE))
    assert got == {"v": repr(value), "nested": {"v": repr(value)}, "list": [repr(value), 1]}


# -- dead_properties ------------------------------------------------------------------

def test_dead_properties_add_the_reason_and_source_headers_when_dead_lettering():
    props = input_properties()
    out = dead_properties(props, "worker_type '' is not valid")
    assert out.headers[REASON_HEADER] == "worker_type '' is not valid"
    assert out.headers[SOURCE_HEADER] == "taskqueue"
    assert REASON_HEADER == "x-taskqueue-reason"
    assert SOURCE_HEADER == "x-taskqueue-queue"
    assert isinstance(out.headers["x-taskqueue-dead-at"], int)


def test_dead_properties_keep_the_input_identity_and_headers_when_dead_lettering():
    props = input_properties()
    out = dead_properties(props, "why")
    assert out.message_id == "msg-1"
    assert out.correlation_id == "corr-1"
    assert out.reply_to == "amq.rabbitmq.reply-to"
    assert out.content_type == "text/plain"
    assert out.delivery_mode == 2
    assert out.headers["x-trace"] == "abc"
    assert out.headers["attempt"] == 2
    assert out.headers["nested"] == {"k": "v"}


def test_dead_properties_do_not_mutate_the_input_headers_when_dead_lettering():
    headers = {"x-trace": "abc", "ratio": 0.5}
    props = input_properties(headers=headers, delivery_mode=1)
    out = dead_properties(props, "why")
    assert props.headers is headers
    assert headers == {"x-trace": "abc", "ratio": 0.5}
    assert REASON_HEADER not in headers
    assert out.headers is not headers
    assert props.delivery_mode == 1


@pytest.mark.parametrize("headers", [None, {}])
def test_dead_properties_create_headers_when_the_input_has_none(headers):
    props = input_properties(headers=headers)
    out = dead_properties(props, "why")
    assert out.headers[REASON_HEADER] == "why"
    assert out.headers[SOURCE_HEADER] == "taskqueue"
    assert props.headers == headers
    out.encode()


def test_dead_properties_encode_when_the_input_had_short_float_headers():
    out = dead_properties(input_properties(headers={"ratio": 0.5, "l": [1.5]}), "why")
    assert out.headers["ratio"] == decimal.Decimal("0.5")
    out.encode()


def test_dead_properties_carry_a_timestamp_float_header_as_its_repr():
    out = dead_properties(input_properties(headers={"sent_at": 1700000000.123}), "why")
    assert received(out)["sent_at"] == "1700000000.123"


@pytest.mark.parametrize("body, content_type, headers", [
    (b"\xff\xfe\x00", None, None),
    (b"[" * 100_000, None, None),
    (envelope("has space", 1), None, None),
    (envelope("x" * 10_000, 1), None, None),
    (b"NaN", None, None),
    (envelope("t", 1), "text/plain", None),
    (b"x", None, {"worker_type": "caf\u00e9"}),
    (b"x", None, {"worker_type": b"\xff\xfe"}),
], ids=["utf16-truncated", "deep", "space", "long-type", "nan", "text-plain",
        "unicode-header", "bad-bytes-header"])
def test_dead_properties_encode_when_given_the_reason_of_a_real_rejection(
        body, content_type, headers):
    decision = route(body, content_type, headers)
    assert isinstance(decision, Rejection)
    out = dead_properties(input_properties(headers=headers), decision.reason)
    assert out.headers[REASON_HEADER] == decision.reason
    out.encode()
