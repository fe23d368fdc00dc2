"""OpenTelemetry spans: the SDK's in-memory exporter in this process (enqueue) and in real
worker processes (execution), with parent and child checked across processes and retries."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import pgjobs
from pgjobs.observability import tracing
from pgjobs.testing import drain
from tests.helpers import scalar, wait_until
from tests.workerapps import traced
from tests.workerprocs import Spawner, spawner

pytestmark = pytest.mark.xdist_group("tracing")


@pytest.fixture
def spawn(fresh_dsn: str) -> Iterator[Spawner]:
    with spawner(fresh_dsn) as start:
        yield start


def worker_spans(spawn: Spawner, path: Path) -> list[dict[str, Any]]:
    """Run a burst worker of the traced app; the spans it finished."""
    worker = spawn("--burst", app="workerapps.traced:app", env={"PGJOBS_TEST_SPANS": str(path)})
    assert worker.wait(60) == 0
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def test_a_job_is_traced_from_the_request_that_enqueued_it_across_processes_and_retries(
        fresh_dsn: str, spawn: Spawner, tmp_path: Path) -> None:
    traced.spans.clear()
    web = traced.provider.get_tracer("web")
    with web.start_as_current_span("POST /signup") as request, \
            psycopg.connect(fresh_dsn) as conn:
        inside = traced.inside.enqueue(conn).id
        flaky = traced.flaky.enqueue(conn).id
        many = traced.async_ok.enqueue_many(conn, [{}, {}])
    here = {s.name: s for s in traced.spans.get_finished_spans()}
    trace_id = request.get_span_context().trace_id
    sends = [s for s in traced.spans.get_finished_spans() if s.name == "send default"]
    assert len(sends) == 3 and {s.kind for s in sends} == {SpanKind.PRODUCER}
    assert {s.parent.span_id for s in sends if s.parent} == {
        request.get_span_context().span_id}
    assert [s.attributes.get("messaging.message.id") for s in sends[:2]] == [
        str(inside), str(flaky)]
    assert sends[2].attributes["messaging.batch.message_count"] == 2
    assert sends[0].attributes["messaging.system"] == "pgjobs"
    assert "POST /signup" in here
    send_of = {int(s.attributes["messaging.message.id"]): s.get_span_context().span_id
               for s in sends[:2]}
    carriers = dict(scalar(fresh_dsn, "SELECT jsonb_object_agg(id, meta -> 'trace') "
                                      "FROM pgjobs.jobs"))
    assert all("traceparent" in c for c in carriers.values())

    # First worker process: every job runs once; the flaky one fails and waits a second.
    first = worker_spans(spawn, tmp_path / "first.json")
    processes = [s for s in first if s["name"] == "process default"]
    assert len(processes) == 4
    assert all(s["kind"] == "CONSUMER" and s["trace_id"] == trace_id for s in processes)
    by_job = {int(s["attributes"]["messaging.message.id"]): s for s in processes}
    assert by_job[inside]["parent"] == send_of[inside]
    assert by_job[flaky]["parent"] == send_of[flaky]
    assert {by_job[r.id]["parent"] for r in many} == {sends[2].get_span_context().span_id}
    handler = next(s for s in first if s["name"] == "inside the handler")
    assert handler["parent"] == by_job[inside]["span_id"]
    assert by_job[flaky]["status"] == "ERROR" and by_job[flaky]["events"] == ["exception"]
    assert by_job[inside]["attributes"]["pgjobs.attempt"] == 1

    # Second worker process: the retry, still a child of the enqueue's span.
    wait_until(lambda: scalar(fresh_dsn, "SELECT run_at <= now() FROM pgjobs.jobs "
                                         "WHERE id = %s", flaky), 10, "the retry to be due")
    second = worker_spans(spawn, tmp_path / "second.json")
    (retry,) = [s for s in second if s["name"] == "process default"]
    assert retry["parent"] == send_of[flaky] and retry["trace_id"] == trace_id
    assert retry["attributes"]["pgjobs.attempt"] == 2 and retry["status"] == "UNSET"


def test_spans_in_process_mark_failures_but_not_cancels(fresh_app: pgjobs.App) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.instrument(fresh_app, provider)

    @fresh_app.job(name="drop")
    async def drop() -> None:
        raise pgjobs.Cancel("not needed")

    @fresh_app.job(name="broken", max_attempts=1)
    async def broken() -> None:
        raise ValueError("bad input")

    drop.enqueue(None)
    broken.enqueue(None)
    assert drain(fresh_app) == {"cancelled": 1, "dead": 1}
    spans = {s.attributes["pgjobs.task"]: s for s in exporter.get_finished_spans()
             if s.kind == SpanKind.CONSUMER}
    assert spans["drop"].status.status_code == StatusCode.UNSET
    assert spans["drop"].attributes["pgjobs.outcome"] == "cancel"
    assert spans["broken"].status.status_code == StatusCode.ERROR
    assert spans["broken"].status.description == "ValueError: bad input"
    # Enqueued outside any trace: the send span is a root, the process span its child.
    send = next(s for s in exporter.get_finished_spans() if s.kind == SpanKind.PRODUCER
                and s.attributes["pgjobs.task"] == "broken")
    assert send.parent is None
    assert spans["broken"].parent.span_id == send.get_span_context().span_id  # type: ignore[union-attr]
    provider.shutdown()


def test_without_a_tracer_provider_nothing_is_stored(fresh_app: pgjobs.App,
                                                     fresh_dsn: str) -> None:
    """The global provider of the API alone records nothing: no trace in meta."""
    tracing.instrument(fresh_app)

    @fresh_app.job(name="t")
    def t() -> None: ...

    job = t.enqueue(None)
    assert scalar(fresh_dsn, "SELECT meta FROM pgjobs.jobs WHERE id = %s", job.id) == {}
    assert drain(fresh_app) == {"succeeded": 1}
