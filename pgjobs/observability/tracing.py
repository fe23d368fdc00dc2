"""OpenTelemetry spans for enqueue and execution (the ``pgjobs[otel]`` extra: the API
only; your application sets up the SDK and its exporters).

    from pgjobs.observability import tracing
    tracing.instrument(app)            # before your own middleware: it is outermost

Each enqueue call is a ``send <queue>`` span (PRODUCER); the trace context current inside
it is stored in the jobs' ``meta`` (``meta.trace``, W3C ``traceparent``), so every attempt
of every job, in whatever worker process, is a ``process <queue>`` span (CONSUMER) whose
parent is the span that enqueued it: a web request's trace goes on into its jobs. Names
and attributes follow OpenTelemetry's messaging semantic conventions
(``messaging.system`` is ``pgjobs``; ``pgjobs.task`` and ``pgjobs.attempt`` are ours).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider

from ..core.control import Cancel, Snooze
from ..core.hooks import EnqueueCall
from ..core.types import Enqueued
from ..core.version import __version__
from ..worker.context import JobContext
from ..worker.host import Host

SYSTEM = "pgjobs"
META_KEY = "trace"
"""The key of ``jobs.meta`` that carries the enqueuer's trace context."""
HANDLED = (Snooze, Cancel)
"""What a handler raises to decide its job's fate without failing: not a span error."""


class Tracing:
    """The four middleware (sync and async, enqueue and execute) around one tracer."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer

    def enqueue(self, call_next: Callable[[], list[Enqueued]], call: EnqueueCall
                ) -> list[Enqueued]:
        with self.sending(call) as span:
            return sent(span, call_next())

    async def enqueue_async(self, call_next: Callable[[], Awaitable[list[Enqueued]]],
                            call: EnqueueCall) -> list[Enqueued]:
        with self.sending(call) as span:
            return sent(span, await call_next())

    def execute(self, call_next: Callable[[], Any], job: JobContext) -> Any:
        with self.processing(job):
            return call_next()

    async def execute_async(self, call_next: Callable[[], Awaitable[Any]], job: JobContext
                            ) -> Any:
        with self.processing(job):
            return await call_next()

    @contextmanager
    def sending(self, call: EnqueueCall) -> Iterator[Span]:
        attributes: dict[str, Any] = {**_common(call.queue, "send"), "pgjobs.task": call.task}
        if len(call.args) > 1:
            attributes["messaging.batch.message_count"] = len(call.args)
        with self.tracer.start_as_current_span(
                f"send {call.queue}", kind=SpanKind.PRODUCER, attributes=attributes,
                record_exception=False, set_status_on_exception=False) as span:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)  # the context of this span, now current
            if carrier:
                call.meta[META_KEY] = carrier
            with _errors(span):
                yield span

    @contextmanager
    def processing(self, job: JobContext) -> Iterator[Span]:
        carrier = job.meta.get(META_KEY)
        parent = propagate.extract(carrier) if isinstance(carrier, dict) else None
        attributes = {**_common(job.queue, "process"), "messaging.message.id": str(job.id),
                      "pgjobs.task": job.task, "pgjobs.attempt": job.attempt}
        with self.tracer.start_as_current_span(
                f"process {job.queue}", context=parent, kind=SpanKind.CONSUMER,
                attributes=attributes, record_exception=False,
                set_status_on_exception=False) as span, _errors(span):
            yield span


def _common(queue: str, operation: str) -> dict[str, Any]:
    return {"messaging.system": SYSTEM, "messaging.destination.name": queue,
            "messaging.operation.type": operation, "messaging.operation.name": operation}


def sent(span: Span, results: list[Enqueued]) -> list[Enqueued]:
    if len(results) == 1:
        span.set_attribute("messaging.message.id", str(results[0].id))
    return results


@contextmanager
def _errors(span: Span) -> Iterator[None]:
    """A failure is recorded on the span; Snooze and Cancel are outcomes, not errors."""
    try:
        yield
    except HANDLED as exc:
        span.set_attribute("pgjobs.outcome", type(exc).__name__.lower())
        raise
    except BaseException as exc:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise


def instrument(app: Host, tracer_provider: TracerProvider | None = None) -> Tracing:
    """Trace ``app``'s enqueues and executions with ``tracer_provider`` (default: the
    global one, which the OpenTelemetry SDK's setup sets). Call it once, where the app
    is defined, before registering other middleware, so its spans enclose theirs."""
    tracing = Tracing(trace.get_tracer("pgjobs", __version__, tracer_provider))
    hooks = app.hooks
    hooks.add_middleware("enqueue", tracing.enqueue)
    hooks.add_middleware("enqueue", tracing.enqueue_async)
    hooks.add_middleware("execute", tracing.execute)
    hooks.add_middleware("execute", tracing.execute_async)
    return tracing
