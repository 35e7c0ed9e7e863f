"""OpenTelemetry, when the process has it: an optional dependency, never a required one.

When `opentelemetry-api` is importable, the Client writes the current span's
context into each task it submits (current_headers), and a worker runs each
task in a span that continues the trace its traceparent names (task_span).
Without it nothing changes: the import is tried once per process and its
failure remembered, the only cost. Only the W3C headers are written and read
(tracecontext.py), whatever propagators the application configured: they are
what taskqueue documents on the wire and logs.

A span is started and ended in the worker's hub thread, and made current in the
task thread while handle_task runs, so that the plugin's own spans are its
children. All attempts of a retried task are children of the submitter's span
(the retry carries the traceparent as it came), each with its attempt number.
"""
import contextlib
import types

from taskqueue.protocol import tracecontext

#: The tracer's name (the instrumentation scope).
SCOPE = "taskqueue"
#: Outcomes (lifecycle.TASK_OUTCOMES) that mark a task's span as failed.
FAILED = ("raised", "reject", "dead")

_api = None     # the OpenTelemetry pieces once looked for (a namespace), or False: absent


def opentelemetry():
    """What taskqueue uses of OpenTelemetry, or None when it is not installed."""
    global _api
    if _api is None:
        _api = _load() or False
    return _api or None


def _load():
    try:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except Exception:   # absent (ImportError), or broken: telemetry never stops a task
        return None
    return types.SimpleNamespace(trace=trace, propagator=TraceContextTextMapPropagator(),
                                 tracer=trace.get_tracer(SCOPE))


def current_headers():
    """The traceparent (and tracestate) of the span current in this thread, as task
    headers; {} without OpenTelemetry or without a valid current span."""
    api = opentelemetry()
    if api is None:
        return {}
    carrier = {}
    api.propagator.inject(carrier)
    if tracecontext.parse(carrier.get(tracecontext.TRACEPARENT)) is None:
        return {}
    return {name: carrier[name] for name in (tracecontext.TRACEPARENT, tracecontext.TRACESTATE)
            if name in carrier}


class _NoSpan:
    """What task_span gives without OpenTelemetry: nothing to do."""

    def current(self):
        return contextlib.nullcontext()

    def end(self, outcome):
        pass


NO_SPAN = _NoSpan()


class TaskSpan:
    """One task's span: current() in the task thread, end(outcome) once it is settled."""

    def __init__(self, api, span):
        self._api, self.span = api, span

    def current(self):
        # Records what handle_task raises on the span, and marks it failed.
        return self._api.trace.use_span(self.span, end_on_exit=False)

    def end(self, outcome):
        self.span.set_attribute("taskqueue.task.outcome", outcome)
        if outcome in FAILED:
            self.span.set_status(self._api.trace.Status(self._api.trace.StatusCode.ERROR,
                                                        outcome))
        self.span.end()


def task_span(worker_type, task_id, attempt, headers, api=None):
    """A TaskSpan named `taskqueue.task <type>`, child of the task's valid traceparent
    (a new trace without one), or NO_SPAN without OpenTelemetry. `headers`: the
    task's, as they came."""
    api = api or opentelemetry()
    if api is None:
        return NO_SPAN
    carrier = {}
    parent = tracecontext.parse(headers.get(tracecontext.TRACEPARENT)
                                if isinstance(headers, dict) else None)
    if parent is not None:
        carrier[tracecontext.TRACEPARENT] = parent.header
        state = tracecontext.usable_state(headers.get(tracecontext.TRACESTATE))
        if state is not None:
            carrier[tracecontext.TRACESTATE] = state
    span = api.tracer.start_span(
        f"taskqueue.task {worker_type}", context=api.propagator.extract(carrier),
        kind=api.trace.SpanKind.CONSUMER,
        attributes={"taskqueue.task.id": task_id, "taskqueue.task.type": worker_type,
                    "taskqueue.task.attempt": attempt, "messaging.system": "rabbitmq"})
    return TaskSpan(api, span)
