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

from collections.abc import Awaitable, Callable
from contextvars import Token
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.context import Context
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
    """The four middleware (sync and async, enqueue and execute) around one tracer.

    Written without context managers: a span per job is on the hot path of every
    worker, and ``start_as_current_span`` costs about three times ``start_span`` with
    ``context.attach``."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer
        # The jobs of one enqueue_many share its context: extract it once, not per job
        # (extracting costs more than starting a span that is not sampled).
        self._last: tuple[dict[str, Any] | None, Context | None] = (None, None)

    def enqueue(self, call_next: Callable[[], list[Enqueued]], call: EnqueueCall
                ) -> list[Enqueued]:
        span, token = self.sending(call)
        try:
            return sent(span, call_next())
        except BaseException as exc:
            failed(span, exc)
            raise
        finally:
            finish(span, token)

    async def enqueue_async(self, call_next: Callable[[], Awaitable[list[Enqueued]]],
                            call: EnqueueCall) -> list[Enqueued]:
        span, token = self.sending(call)
        try:
            return sent(span, await call_next())
        except BaseException as exc:
            failed(span, exc)
            raise
        finally:
            finish(span, token)

    def execute(self, call_next: Callable[[], Any], job: JobContext) -> Any:
        span, token = self.processing(job)
        try:
            return call_next()
        except BaseException as exc:
            failed(span, exc)
            raise
        finally:
            finish(span, token)

    async def execute_async(self, call_next: Callable[[], Awaitable[Any]], job: JobContext
                            ) -> Any:
        span, token = self.processing(job)
        try:
            return await call_next()
        except BaseException as exc:
            failed(span, exc)
            raise
        finally:
            finish(span, token)

    def sending(self, call: EnqueueCall) -> tuple[Span, Token[Context]]:
        """Start the enqueue's span, make it current, and store its context in the
        jobs' meta (nothing when the span is not recorded: no SDK, or not sampled)."""
        queue = call.queue
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM, "messaging.destination.name": queue,
            "messaging.operation.type": "send", "messaging.operation.name": "send",
            "pgjobs.task": call.task}
        if len(call.args) > 1:
            attributes["messaging.batch.message_count"] = len(call.args)
        span = self.tracer.start_span(f"send {queue}", kind=SpanKind.PRODUCER,
                                      attributes=attributes)
        current = trace.set_span_in_context(span)
        carrier: dict[str, str] = {}
        propagate.inject(carrier, current)
        if carrier:
            call.meta[META_KEY] = carrier
        return span, context.attach(current)

    def processing(self, job: JobContext) -> tuple[Span, Token[Context]]:
        """Start the attempt's span as a child of the enqueue's (from the job's meta),
        and make it current for the handler."""
        carrier = job.job.meta.get(META_KEY)
        last, parent = self._last
        if carrier != last:
            parent = propagate.extract(carrier) if isinstance(carrier, dict) else None
            self._last = (carrier, parent)
        queue = job.queue
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM, "messaging.destination.name": queue,
            "messaging.operation.type": "process", "messaging.operation.name": "process",
            "messaging.message.id": str(job.id), "pgjobs.task": job.task,
            "pgjobs.attempt": job.attempt}
        span = self.tracer.start_span(f"process {queue}", context=parent,
                                      kind=SpanKind.CONSUMER, attributes=attributes)
        return span, context.attach(trace.set_span_in_context(span, parent))


def sent(span: Span, results: list[Enqueued]) -> list[Enqueued]:
    if len(results) == 1:
        span.set_attribute("messaging.message.id", str(results[0].id))
    return results


def failed(span: Span, exc: BaseException) -> None:
    """A failure is recorded on the span; Snooze and Cancel are outcomes, not errors."""
    if isinstance(exc, HANDLED):
        span.set_attribute("pgjobs.outcome", type(exc).__name__.lower())
        return
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


def finish(span: Span, token: Token[Context]) -> None:
    span.end()
    context.detach(token)


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
