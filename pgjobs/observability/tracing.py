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

import time
from collections.abc import Awaitable, Callable
from contextvars import Token
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    ProxyTracerProvider,
    Span,
    SpanKind,
    Status,
    StatusCode,
    TracerProvider,
)

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
    """Spans around enqueues and attempts, with one tracer: a sync and an async
    middleware for each (:meth:`middleware`).

    Written without context managers: a span per job is on the hot path of every
    worker, and ``start_as_current_span`` costs about three times ``start_span`` with
    ``context.attach``."""

    def __init__(self, tracer: trace.Tracer, provider: TracerProvider | None = None) -> None:
        self.tracer = tracer
        self.provider = provider
        # The jobs of one enqueue_many share its context: extract it once, not per job
        # (extracting costs more than starting a span that is not sampled).
        self._last: tuple[dict[str, Any] | None, Context | None] = (None, None)
        self._sdk = False
        self._look_again = 0.0

    def middleware(self, begin: Callable[[Any], tuple[Span, Token[Context]]],
                   end: Callable[[Span, Any], Any] = lambda span, result: result
                   ) -> tuple[Callable[..., Any], Callable[..., Any]]:
        """A sync and an async middleware that run their call inside the span ``begin``
        starts for their subject (``end`` sees the span and the call's result)."""

        def wrap(call_next: Callable[[], Any], subject: Any) -> Any:
            if self.off():
                return call_next()
            span, token = begin(subject)
            try:
                return end(span, call_next())
            except BaseException as exc:
                failed(span, exc)
                raise
            finally:
                finish(span, token)

        async def wrap_async(call_next: Callable[[], Awaitable[Any]], subject: Any) -> Any:
            if self.off():
                return await call_next()
            span, token = begin(subject)
            try:
                return end(span, await call_next())
            except BaseException as exc:
                failed(span, exc)
                raise
            finally:
                finish(span, token)

        return wrap, wrap_async

    def off(self) -> bool:
        """True while no SDK stands behind the global provider (and none was given):
        every span would be a no-op, and reading a job's trace context costs more than
        running a small job, so enqueues and attempts go on without either. Looked up
        at most once a second (the lookup costs microseconds): an SDK set up after
        ``instrument`` counts from then on, and one set up stays."""
        if self.provider is not None or self._sdk:
            return False
        now = time.monotonic()
        if now >= self._look_again:
            self._look_again = now + 1.0
            self._sdk = not isinstance(trace.get_tracer_provider(), ProxyTracerProvider)
        return not self._sdk

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
    tracing = Tracing(trace.get_tracer("pgjobs", __version__, tracer_provider),
                      tracer_provider)
    for middleware in tracing.middleware(tracing.sending, sent):
        app.hooks.add_middleware("enqueue", middleware)
    for middleware in tracing.middleware(tracing.processing):
        app.hooks.add_middleware("execute", middleware)
    return tracing
