"""tracing.py: OpenTelemetry when it is installed, nothing when it is not.

The wrapper is tested with a fake tracer (always), and with the real SDK where the
test venv has it (the pypi stack: run-tests installs opentelemetry-api and -sdk there;
the debian and trixie stacks run without, as most hosts do)."""
import sys
import threading
import types

import pika
import pytest

from taskqueue import client as client_module, worker as worker_module
from taskqueue.broker.eventlog import NoEvents
from taskqueue.host import tracing
from taskqueue.host.config import WorkerGroup
from taskqueue.runtime.cancels import NoCancels
from taskqueue.runtime.taskthread import TaskThread
from taskqueue.worker import HubCalls

from fakes import RecordingSession

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"


@pytest.fixture(autouse=True)
def fresh_import_state(monkeypatch):
    """Each test finds OpenTelemetry looked for afresh, and leaves it so."""
    monkeypatch.setattr(tracing, "_api", None)


# -- a fake OpenTelemetry ------------------------------------------------------------

class FakeSpan:
    def __init__(self, name, context, kind, attributes):
        self.name, self.context, self.kind = name, context, kind
        self.attributes, self.status, self.ended = dict(attributes), None, False

    def set_attribute(self, key, value):
        self.attributes[key] = value

    def set_status(self, status):
        self.status = status

    def end(self):
        self.ended = True


class FakeTracer:
    def __init__(self):
        self.spans = []

    def start_span(self, name, context=None, kind=None, attributes=None):
        self.spans.append(FakeSpan(name, context, kind, attributes))
        return self.spans[-1]


class FakePropagator:
    """extract: the carrier it was given, as the context; inject: what `current` holds."""
    current = {}

    def extract(self, carrier):
        return ("context of", dict(carrier))

    def inject(self, carrier):
        carrier.update(self.current)


def fake_api():
    current = threading.local()

    class UseSpan:
        def __init__(self, span, end_on_exit):
            self.span = span
            assert end_on_exit is False

        def __enter__(self):
            current.span = self.span

        def __exit__(self, *exc):
            current.span = None

    trace = types.SimpleNamespace(
        use_span=UseSpan, Status=lambda code, text: (code, text),
        StatusCode=types.SimpleNamespace(ERROR="ERROR"),
        SpanKind=types.SimpleNamespace(CONSUMER="CONSUMER"),
        current=lambda: getattr(current, "span", None))
    return types.SimpleNamespace(trace=trace, propagator=FakePropagator(), tracer=FakeTracer())


def test_a_task_span_continues_the_tasks_trace_named_after_its_type():
    api = fake_api()
    span = tracing.task_span("resize", "m-1", 2, {"traceparent": TRACEPARENT,
                                                  "tracestate": "congo=1", "other": "x"}, api)
    (started,) = api.tracer.spans
    assert started.name == "taskqueue.task resize" and started.kind == "CONSUMER"
    assert started.context == ("context of", {"traceparent": TRACEPARENT,
                                              "tracestate": "congo=1"})
    assert started.attributes == {"taskqueue.task.id": "m-1", "taskqueue.task.type": "resize",
                                  "taskqueue.task.attempt": 2, "messaging.system": "rabbitmq"}
    span.end("retry")
    assert started.ended and started.attributes["taskqueue.task.outcome"] == "retry"
    assert started.status is None


@pytest.mark.parametrize("outcome, failed", [("ack", False), ("retry", False),
                                             ("requeue", False), ("raised", True),
                                             ("reject", True), ("dead", True)])
def test_a_task_span_is_marked_failed_for_a_task_that_failed(outcome, failed):
    api = fake_api()
    tracing.task_span("t", "m-1", 1, None, api).end(outcome)
    assert api.tracer.spans[0].status == (("ERROR", outcome) if failed else None)


@pytest.mark.parametrize("headers", [
    None, {}, {"traceparent": TRACEPARENT.upper()}, {"traceparent": TRACEPARENT.encode()},
    {"traceparent": {"a": 1}}, {"traceparent": "x" * 10_000, "tracestate": "congo=1"},
    {"traceparent": f"00-{'0' * 32}-{PARENT}-01"}, {"traceparent": "ff" + TRACEPARENT[2:]},
])
def test_a_task_without_a_valid_traceparent_starts_a_trace_of_its_own(headers):
    api = fake_api()
    tracing.task_span("t", "m-1", 1, headers, api)
    assert api.tracer.spans[0].context == ("context of", {})


@pytest.mark.parametrize("state", ["congo=\x1b[2J", "a" * 513, b"congo=1", ["congo=1"]])
def test_a_tracestate_that_is_not_short_printable_ascii_is_not_passed_on(state):
    api = fake_api()
    tracing.task_span("t", "m-1", 1, {"traceparent": TRACEPARENT, "tracestate": state}, api)
    assert api.tracer.spans[0].context == ("context of", {"traceparent": TRACEPARENT})


def test_a_later_versions_traceparent_is_passed_on_as_version_00_reads_it():
    api = fake_api()
    tracing.task_span("t", "m-1", 1, {"traceparent": f"cc-{TRACE}-{PARENT}-01-more"}, api)
    assert api.tracer.spans[0].context == ("context of", {"traceparent": TRACEPARENT})


def test_the_client_takes_the_current_spans_headers_and_nothing_invalid(monkeypatch):
    api = fake_api()
    monkeypatch.setattr(tracing, "_api", api)
    monkeypatch.setattr(FakePropagator, "current", {"traceparent": TRACEPARENT,
                                                    "tracestate": "congo=1", "baggage": "k=v"})
    assert tracing.current_headers() == {"traceparent": TRACEPARENT, "tracestate": "congo=1"}
    assert client_module.trace_headers() == {"traceparent": TRACEPARENT, "tracestate": "congo=1"}
    monkeypatch.setattr(FakePropagator, "current", {"traceparent": "00-bad"})
    assert tracing.current_headers() == {}
    monkeypatch.setattr(FakePropagator, "current", {})
    assert tracing.current_headers() == {}


def test_what_the_application_gives_wins_over_the_current_span(monkeypatch):
    monkeypatch.setattr(tracing, "_api", fake_api())
    monkeypatch.setattr(FakePropagator, "current", {"traceparent": f"00-{'1' * 32}-{PARENT}-01"})
    assert client_module.trace_headers(TRACEPARENT) == {"traceparent": TRACEPARENT}
    with pytest.raises(ValueError, match="is not a W3C traceparent"):
        client_module.trace_headers("00-bad")


def test_a_submitted_task_carries_its_trace_beside_the_worker_type_header():
    _, props = client_module.onehop_message("resize", {}, trace={"traceparent": TRACEPARENT})
    assert props.headers == {"traceparent": TRACEPARENT, "worker_type": "resize"}
    _, props = client_module.task_message("resize", {}, trace={"traceparent": TRACEPARENT})
    assert props.headers == {"traceparent": TRACEPARENT}
    _, props = client_module.task_message("resize", {})
    assert props.headers is None


# -- without OpenTelemetry -----------------------------------------------------------

def test_without_opentelemetry_nothing_happens_and_the_import_is_tried_once(monkeypatch):
    monkeypatch.setitem(sys.modules, "opentelemetry", None)    # import fails: ImportError
    tries = []
    load = tracing._load
    monkeypatch.setattr(tracing, "_load", lambda: tries.append(1) or load())
    assert tracing.task_span("t", "m-1", 1, {"traceparent": TRACEPARENT}) is tracing.NO_SPAN
    assert tracing.current_headers() == {}
    assert client_module.trace_headers() == {}
    assert tries == [1]
    with tracing.NO_SPAN.current():
        tracing.NO_SPAN.end("raised")


# -- around handle_task, in the worker -----------------------------------------------

class Plugin:
    def __init__(self, api, raises=False):
        self.api, self.raises, self.seen = api, raises, None

    def handle_task(self, channel, method, header, body):
        self.seen = self.api.trace.current()       # in the task thread
        if self.raises:
            raise ValueError("boom")
        channel.basic_ack()


def handle(plugin, headers, monkeypatch):
    monkeypatch.setattr(tracing, "_api", plugin.api)
    session = RecordingSession(require_mandatory=False)
    session.delivered.append(5)
    method = pika.spec.Basic.Deliver(delivery_tag=5, routing_key="t")
    props = pika.BasicProperties(message_id="m-1", headers=headers)
    tasks = TaskThread("test")
    try:
        intake = types.SimpleNamespace(holds_ahead=False)
        return worker_module._handle(plugin, WorkerGroup("t", None, 1), session, NoEvents(),
                                     HubCalls(), tasks, intake, NoCancels(), "m-1", method, props,
                                     b"{}")
    finally:
        tasks.close()


def test_the_worker_runs_handle_task_in_its_span_and_ends_it_with_the_outcome(monkeypatch):
    plugin = Plugin(fake_api())
    outcome, _ = handle(plugin, {"traceparent": TRACEPARENT, "x-taskqueue-retries": 2},
                        monkeypatch)
    (span,) = plugin.api.tracer.spans
    assert outcome == "ack" and plugin.seen is span
    assert span.attributes["taskqueue.task.attempt"] == 3
    assert span.attributes["taskqueue.task.outcome"] == "ack" and span.ended
    assert plugin.api.trace.current() is None


def test_a_task_that_raised_ends_its_span_failed(monkeypatch):
    plugin = Plugin(fake_api(), raises=True)
    outcome, _ = handle(plugin, {"x-taskqueue-retries": "forged"}, monkeypatch)
    (span,) = plugin.api.tracer.spans
    assert outcome == "raised" and span.status == ("ERROR", "raised")
    assert span.attributes["taskqueue.task.attempt"] == 1


# -- the real SDK, where the venv has it ---------------------------------------------

@pytest.fixture
def sdk():
    """tracing's own OpenTelemetry pieces, with a tracer of a provider of the test's own
    (the global provider can be set once per process) exporting to memory."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    api = tracing._load()
    api.tracer = provider.get_tracer("test")
    return api, exporter


def test_with_the_sdk_a_task_span_is_a_child_of_the_submitters_span(sdk):
    api, exporter = sdk
    span = tracing.task_span("resize", "m-1", 1, {"traceparent": TRACEPARENT,
                                                  "tracestate": "congo=t61rcWkgMzE"}, api)
    with pytest.raises(ValueError):
        with span.current():
            with api.tracer.start_as_current_span("the plugin's own"):
                raise ValueError("boom")
    span.end("raised")
    inner, task = exporter.get_finished_spans()
    assert task.name == "taskqueue.task resize" and task.kind == api.trace.SpanKind.CONSUMER
    assert task.context.trace_id == int(TRACE, 16) and task.parent.span_id == int(PARENT, 16)
    assert task.parent.is_remote and task.context.trace_state.get("congo") == "t61rcWkgMzE"
    assert inner.parent.span_id == task.context.span_id
    assert dict(task.attributes) == {
        "taskqueue.task.id": "m-1", "taskqueue.task.type": "resize",
        "taskqueue.task.attempt": 1, "messaging.system": "rabbitmq",
        "taskqueue.task.outcome": "raised"}
    assert task.status.status_code == api.trace.StatusCode.ERROR
    assert [event.name for event in task.events] == ["exception"]


def test_with_the_sdk_the_client_injects_the_current_span(sdk, monkeypatch):
    api, _ = sdk
    monkeypatch.setattr(tracing, "_api", api)
    with api.tracer.start_as_current_span("the application's") as current:
        headers = client_module.trace_headers()
    context = current.get_span_context()
    assert headers == {"traceparent": f"00-{context.trace_id:032x}-{context.span_id:016x}-"
                                      f"{int(context.trace_flags):02x}"}
    assert client_module.trace_headers() == {}      # no span current


# -- taskqueue submit ----------------------------------------------------------------

def submit_args(traceparent=None, tracestate=None):
    return types.SimpleNamespace(traceparent=traceparent, tracestate=tracestate)


def test_submit_takes_the_options_else_the_environment(capsys):
    from taskqueue.cli.tools import trace_context
    assert trace_context(submit_args(TRACEPARENT, "congo=1"), {"TRACEPARENT": "x"}) == {
        "traceparent": TRACEPARENT, "tracestate": "congo=1"}
    assert trace_context(submit_args(), {"TRACEPARENT": TRACEPARENT}) == {
        "traceparent": TRACEPARENT, "tracestate": None}
    assert trace_context(submit_args(), {"TRACESTATE": "congo=1"}) == {}
    assert trace_context(submit_args(), {}) == {}
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("traceparent, tracestate, problem", [
    ("00-bad", None, "--traceparent/--tracestate: traceparent '00-bad' is not a W3C traceparent"),
    (None, "congo=1", "--traceparent/--tracestate: a tracestate needs a traceparent"),
    (TRACEPARENT, "é", "--traceparent/--tracestate: tracestate 'é' is not a W3C tracestate"),
])
def test_a_bad_option_is_bad_input(traceparent, tracestate, problem):
    from taskqueue.cli.tools import trace_context
    from taskqueue.errors import InputError
    with pytest.raises(InputError, match=problem):
        trace_context(submit_args(traceparent, tracestate), {})


def test_a_bad_environment_is_ignored_with_a_warning_escaped(capsys):
    from taskqueue.cli.tools import trace_context
    assert trace_context(submit_args(), {"TRACEPARENT": "\x1b[2J"}) == {}
    assert capsys.readouterr().err == (
        "taskqueue: warning: TRACEPARENT/TRACESTATE of the environment ignored: traceparent "
        "'\\x1b[2J' is not a W3C traceparent: expected 00-<32 hex digits>-<16 hex digits>-"
        "<2 hex digits>, lowercase, ids not all zero\n")
