"""A traced app for the tracing tests: the OpenTelemetry SDK with its in-memory exporter.
A worker process running it writes every span it finished to the JSON file named by
PGJOBS_TEST_SPANS after each job's outcome, for the test process to read."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import pgjobs
from pgjobs.observability import tracing

spans = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(spans))

app = pgjobs.App()
tracing.instrument(app, provider)


@app.job(name="traced.inside")
def inside() -> None:
    with provider.get_tracer("app").start_as_current_span("inside the handler"):
        pass


@app.job(name="traced.async_ok")
async def async_ok() -> str:
    return "ok"


@app.job(name="traced.flaky", retry_backoff=lambda attempt: 1.0)
def flaky() -> None:
    if pgjobs.current_job().attempt == 1:
        raise RuntimeError("first attempt fails")


def as_dict(span: ReadableSpan) -> dict[str, Any]:
    context, parent = span.get_span_context(), span.parent
    assert context is not None
    return {
        "name": span.name, "kind": span.kind.name, "trace_id": context.trace_id,
        "span_id": context.span_id, "parent": parent.span_id if parent else None,
        "attributes": dict(span.attributes or {}), "status": span.status.status_code.name,
        "events": [event.name for event in span.events],
    }


@app.on("succeeded", "retried", "died")
def dump(event: pgjobs.JobEvent) -> None:
    """Every span ended before its job's outcome was written: write them all."""
    path = os.environ.get("PGJOBS_TEST_SPANS")
    if path:
        with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(path), delete=False) as f:
            json.dump([as_dict(s) for s in spans.get_finished_spans()], f)
        os.replace(f.name, path)
