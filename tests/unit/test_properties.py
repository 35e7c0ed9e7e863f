"""Untrusted input, proven: whatever arrives, the answer is a decision, never a crash.

Property-based (hypothesis): the dispatcher's `route` on any message, the
config loader on any file, `submit --file` on any lines. Each gives its own
kind of answer (a Route or a Rejection, a Config or a ConfigError, tasks or an
InputError) and nothing else; a Route always names a worker type that makes a
queue `worker_<type>` and nothing outside it.
"""
import io
import json
import os
import tempfile

from hypothesis import HealthCheck, example, given, settings, strategies as st

from taskqueue.cli import bulk
from taskqueue.errors import ConfigError, InputError
from taskqueue.host import config
from taskqueue.protocol import workitems
from taskqueue.protocol.routing import TYPE_PATTERN, Rejection, Route, route
from taskqueue.runtime.formats import Format

#: Enough examples to find the odd case, few enough to keep tests/unit fast.
FAST = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def assert_decision(answer):
    assert isinstance(answer, (Route, Rejection)), answer
    if isinstance(answer, Route):
        assert isinstance(answer.worker_type, str) and TYPE_PATTERN.match(answer.worker_type)
        queue = f"worker_{answer.worker_type}"
        assert queue.isascii() and "/" not in queue and " " not in queue
        assert isinstance(answer.body, bytes)
    else:
        assert isinstance(answer.reason, str) and answer.reason


# -- routing.route ---------------------------------------------------------------

#: Content types: the built-in ones (any case, with parameters), format plugins', and noise.
content_types = st.one_of(
    st.none(),
    st.sampled_from(["text/plain", "application/json", "text/json", "Text/Plain; charset=utf-8",
                     " application/JSON ;x=y", "", ";", "application/x-test", "x/y"]),
    st.text(max_size=40))

#: What a header value can be in a pika message (AMQP field table values).
header_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30),
              st.binary(max_size=30), st.decimals(allow_nan=False)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8)

headers = st.one_of(
    st.none(),
    st.dictionaries(st.text(max_size=12), header_values, max_size=3),
    st.fixed_dictionaries({"worker_type": header_values}))

#: Bodies: any bytes, and JSON envelopes with any worker_type and workitem.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10)
envelopes = st.builds(lambda t, w, extra, enc: json.dumps({"worker_type": t, "workitem": w, **extra},
                                                          ensure_ascii=False).encode(enc, "surrogatepass"),
                      json_values | st.text(max_size=30), json_values,
                      st.dictionaries(st.text(max_size=8), json_values, max_size=2),
                      st.sampled_from(["utf-8", "utf-16", "utf-32", "utf-16-le"]))
plain_bodies = st.builds(lambda t, sep, rest: t + sep + rest,
                         st.binary(max_size=20) | st.text(max_size=20).map(str.encode),
                         st.sampled_from([b" ", b"", b"  ", b"\t", b"\n "]), st.binary(max_size=20))
bodies = st.one_of(st.binary(max_size=200), envelopes, plain_bodies)


@FAST
@given(body=bodies, content_type=content_types, headers=headers)
@example(body=b"\xef\xbb\xbf{}", content_type=None, headers=None)
@example(body=b"[" * 100000, content_type="application/json", headers=None)
@example(body=b"worker1 x", content_type=None, headers={"worker_type": b"\xff"})
@example(body=b"\x00\x00\x00{", content_type=None, headers=None)
def test_route_decides_any_message_and_a_route_names_a_proper_worker_queue(body, content_type, headers):
    assert_decision(route(body, content_type, headers))


#: What a format plugin may answer: anything, or an exception of any kind.
plugin_answers = st.one_of(
    json_values, st.tuples(header_values, header_values),
    st.tuples(st.text(max_size=30) | st.binary(max_size=10), st.binary(max_size=20)),
    st.sampled_from([ValueError("no"), KeyError("k"), SystemExit(3), RecursionError(), TypeError()]))


@FAST
@given(body=st.binary(max_size=50), answer=plugin_answers, content_type=st.sampled_from(
    ["application/x-test", "Application/X-Test; v=1"]))
def test_route_decides_whatever_a_format_plugin_answers(body, answer, content_type):
    def read(_body):
        if isinstance(answer, BaseException):
            raise answer
        return answer
    readers = {"application/x-test": Format("application/x-test", "test:read from test 1", read)}
    assert_decision(route(body, content_type, None, readers))


# -- config.load -----------------------------------------------------------------

GROUP_OPTIONS = ("workers", "user", "prefetch", "lookahead", "stop_timeout", "task_timeout",
                 "max_tasks", "max_memory", "max_retries", "retry_delay", "retry_backoff",
                 "retry_max_delay")
SECTIONS = {"amqp": config.AMQP_OPTIONS, "dispatcher": config.DISPATCHER_OPTIONS,
            "logging": config.LOGGING_OPTIONS, "supervisor": config.SUPERVISOR_OPTIONS,
            "metrics": config.METRICS_OPTIONS, "DEFAULT": GROUP_OPTIONS,
            "worker1": GROUP_OPTIONS, "worker2": GROUP_OPTIONS, "worker2_a": GROUP_OPTIONS}
TYPES = {"worker1", "worker2", "worker3"}

#: Values near the edges of what the converters take, and anything at all.
values = st.one_of(
    st.sampled_from(["0", "1", "-1", "1.5", "nan", "inf", "-inf", "1e400", "1e-400", "0x10",
                     "1_000", " 3 ", "a, b", "a,a", ",", "root", "nobody", "/", "/tmp/x", "relative",
                     "amqp://", "amqp://u:p@h:0/v", "amqps://h:99999", "amqp://[::1", "::1",
                     "127.0.0.1", "quorum", "debug", "file", "yes", "%(x)s", "\u00e9", "\x00"]),
    st.integers(-10**20, 10**20).map(str), st.floats().map(repr),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=30))

sections = st.lists(
    st.sampled_from(sorted(SECTIONS)).flatmap(lambda name: st.tuples(
        st.just(name), st.dictionaries(st.sampled_from(SECTIONS[name] + ("unknown",)), values,
                                       max_size=4))),
    max_size=5, unique_by=lambda s: s[0])


def ini(parsed):
    return "".join(f"[{name}]\n" + "".join(f"{option}: {value}\n" for option, value in options.items())
                   for name, options in parsed)


def load_text(data):
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "taskqueue.conf")
        with open(path, "wb") as f:
            f.write(data)
        try:
            cfg = config.load(path, TYPES, check_users=False)
        except ConfigError as exc:
            assert str(exc)
            return None
        assert isinstance(cfg, config.Config)
        for group in cfg.groups:
            assert TYPE_PATTERN.match(group.worker_type) and group.queue == f"worker_{group.worker_type}"
        return cfg


@FAST
@given(parsed=sections)
def test_config_load_of_any_options_gives_a_config_or_a_config_error(parsed):
    load_text(ini(parsed).encode("utf-8", "surrogatepass"))


@FAST
@given(data=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(
    lambda t: t.encode("utf-8", "surrogatepass"))))
@example(data=b"[worker1]\nworkers: 1\n[worker1]\n")
@example(data=b"x")
@example(data=b"[amqp]\n  continued\n")
@example(data=b"[worker1]\nworkers = a,b\n[worker1_a]\n[worker1_b]\nworkers: nan\n")
def test_config_load_of_any_file_gives_a_config_or_a_config_error(data):
    load_text(data)


# -- submit --file ---------------------------------------------------------------

lines = st.lists(st.one_of(
    st.binary(max_size=40),
    st.builds(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n",
              json_values),
    st.sampled_from([b"\n", b"  \r\n", b"\xef\xbb\xbf1\n", b"NaN\n", b"1e400\n", b"[" * 5000 + b"\n",
                     b'{"a": 1, "a": 2}\n', b'"\\ud800"\n'])), max_size=8)


@FAST
@given(lines=lines, worker_type=st.sampled_from(["recorder", "a.b-c_1"]))
def test_submit_file_lines_give_tasks_that_route_or_problems_naming_their_line(lines, worker_type):
    tasks, problems = bulk.parse_lines(io.BytesIO(b"".join(lines)), worker_type)
    count = len(b"".join(lines).splitlines(keepends=True))
    assert all(1 <= task.line <= count for task in tasks)
    assert all(1 <= number <= count and isinstance(what, str) and what for number, what in problems)
    for task in tasks:
        # One hop: the body is the workitem, routed by the worker_type header unchanged,
        # and JSON a worker reads back
        decided = route(task.body, "application/json", {"worker_type": worker_type})
        assert decided == Route(worker_type, task.body)
        workitems.loads(task.body)


@FAST
@given(data=st.binary(max_size=400) | st.lists(st.sampled_from(
    [b"1\n", b"{\n", b"\xff\n", b"\n", b'"x"\n', b"\xef\xbb\xbf[]\n"]), max_size=15).map(b"".join))
def test_submit_file_gives_tasks_or_an_input_error(data):
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "tasks.jsonl")
        with open(path, "wb") as f:
            f.write(data)
        try:
            tasks = bulk.read_tasks(path, "recorder")
        except InputError as exc:
            assert f"{path}:" in str(exc) and "nothing was submitted" in str(exc)
            return
        assert all(isinstance(task, bulk.Task) for task in tasks)
