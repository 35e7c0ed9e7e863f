"""A test plugin that sets up the OpenTelemetry SDK in setup(), as an application's
plugin would, and writes each finished span as a JSON line to
`<record_dir>/spans.<pid>.jsonl` (tests/integration/test_tracecontext.py). Needs
opentelemetry-sdk (the pypi test stack has it).

The workitem is a JSON object: `id`, and `fail_times` (raise on the first N attempts,
counted by x-taskqueue-retries). Each attempt opens a span of the plugin's own.
"""
import json
import os

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from taskqueue.worker import BaseWorker


class FileExporter(SpanExporter):
    def __init__(self, path):
        self.path = path

    def export(self, spans):
        with open(self.path, "a") as f:
            for span in spans:
                f.write(json.dumps({
                    "name": span.name, "trace_id": f"{span.context.trace_id:032x}",
                    "span_id": f"{span.context.span_id:016x}",
                    "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
                    "kind": span.kind.name, "status": span.status.status_code.name,
                    "attributes": dict(span.attributes),
                    "events": [event.name for event in span.events]}) + "\n")
        return SpanExportResult.SUCCESS


class Traced(BaseWorker):
    def setup(self):
        provider = TracerProvider()
        path = os.path.join(self.settings["record_dir"], f"spans.{os.getpid()}.jsonl")
        provider.add_span_processor(SimpleSpanProcessor(FileExporter(path)))
        trace.set_tracer_provider(provider)
        self.tracer = trace.get_tracer("tqtest.traced")

    def handle_task(self, channel, method, header, body):
        task = json.loads(body)
        attempt = (header.headers or {}).get("x-taskqueue-retries", 0)
        with self.tracer.start_as_current_span(f"plugin {task['id']} attempt {attempt}"):
            if attempt < task.get("fail_times", 0):
                raise RuntimeError(f"task {task['id']} fails attempt {attempt}")
        channel.basic_ack(method.delivery_tag)
