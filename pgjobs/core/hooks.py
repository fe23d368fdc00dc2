"""Extension points: middleware around enqueue and execution, lifecycle events, probes.

    @app.middleware("execute")
    async def report(call_next, job):              # around every async handler's attempt
        try:
            return await call_next()
        except Exception as exc:
            sentry_sdk.capture_exception(exc)
            raise

    @app.on("died", "reclaimed")
    def page(event: pgjobs.JobEvent) -> None: ...

A middleware is ``mw(call_next, subject)``: it calls ``call_next()`` once (awaits it, if
async) and returns its result. The subject is an :class:`EnqueueCall` for ``"enqueue"``
and the running job's :class:`pgjobs.JobContext` for ``"execute"``. A plain ``def``
wraps the sync calls (``enqueue``, ``enqueue_many``, sync handlers, in the handler's
thread) and an ``async def`` the async ones (``enqueue_async``, async handlers, on the
worker's loop); register one of each to wrap both. The first registered is outermost.

Nothing an extension does loses a job or changes its outcome: a middleware that raises,
or returns without calling ``call_next``, is logged and the call runs anyway; what the
wrapped call returned or raised is the result, whatever the chain returns or raises
around it. A listener that raises is logged. With nothing registered none of this runs.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, Literal, TypeVar, get_args

from .errors import ConfigurationError
from .outcomes import (
    CANCELLED,
    CRASHED,
    DEAD,
    LEASE_LOST,
    RELEASED,
    RETRY,
    SNOOZED,
    SUCCEEDED,
    UNKNOWN_TASK,
)

log = logging.getLogger("pgjobs.hooks")
T = TypeVar("T")

Phase = Literal["enqueue", "execute"]
EventKind = Literal["enqueued", "started", "succeeded", "retried", "died", "cancelled",
                    "snoozed", "released", "lease_lost", "expired", "reclaimed"]
EVENT_KINDS = frozenset(get_args(EventKind))

OUTCOME_EVENT: Mapping[str, EventKind] = {
    SUCCEEDED: "succeeded", RETRY: "retried", DEAD: "died", CANCELLED: "cancelled",
    SNOOZED: "snoozed", RELEASED: "released", LEASE_LOST: "lease_lost",
    CRASHED: "reclaimed",
    # handed back for a worker that has its task (or dead, when no worker has for the
    # grace: the database decides, after the event)
    UNKNOWN_TASK: "released",
}
"""The event an attempt's outcome (``core.outcomes``) is reported as."""
STATE_AFTER: Mapping[str, str | None] = {
    "enqueued": "available", "started": "running", "succeeded": "succeeded",
    "retried": "available", "died": "dead", "cancelled": "cancelled",
    "snoozed": "available", "released": "available", "lease_lost": None,
    "expired": "expired", "reclaimed": "available",
}
_NO_META: Mapping[str, Any] = MappingProxyType({})


@dataclass(slots=True)
class JobEvent:
    """One moment in a job's life, given to the listeners of its ``kind`` (all of them
    get the same object: read it, do not change it; not frozen, because a frozen
    dataclass costs five times as much to build, once per job and event).

    ``enqueued`` (after the insert, in the caller's transaction: it may yet roll back),
    ``started``, then one of ``succeeded``, ``retried``, ``died``, ``cancelled``,
    ``snoozed``, ``released`` (handed back at shutdown) or ``lease_lost`` (the outcome
    was dropped: another attempt owns the job) once the outcome is written; ``expired``
    and ``reclaimed`` (from a lost worker; ``state`` is ``dead`` once the recovery budget
    is spent) come from the maintenance of whichever worker ran it."""

    kind: EventKind
    job_id: int
    task: str
    queue: str
    attempt: int
    """The attempt's number (0 before the first claim)."""
    state: str | None
    """The job's state after the event (None for ``lease_lost``: not this worker's)."""
    duration: float | None = None
    """Seconds the handler ran (outcome events only)."""
    error: Mapping[str, Any] | None = None
    """The ``jobs.errors`` entry of a failed attempt: type, message, traceback."""
    meta: Mapping[str, Any] = field(default_factory=lambda: _NO_META)
    """The job's ``meta`` (what enqueue middleware stored, among pgjobs' own keys)."""
    worker_id: int | None = None
    """The worker that reports it (None at enqueue)."""


@dataclass(slots=True)
class EnqueueCall:
    """One enqueue call, as enqueue middleware sees it: jobs of one task, not yet written."""

    task: str
    queue: str
    args: Sequence[Mapping[str, Any]]
    """Each job's keyword arguments, already validated (read them, do not change them)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Stored in every job's ``meta`` (JSON): add your keys, e.g. a tenant or trace
    context, and read them back in execute middleware as ``job.meta``."""


class Probe:
    """Measurements of a worker's own machinery, not of jobs (``app.hooks.probes``).
    Called on the worker's event loop: override what you record, and keep it quick."""

    def claimed(self, jobs: int, seconds: float) -> None:
        """A claim round trip took ``seconds`` and returned ``jobs`` jobs."""

    def renewals_failed(self, leases: int) -> None:
        """``leases`` leases were not renewed: a heartbeat failed, or found them lost."""

    def occupancy(self, running: int, free: int) -> None:
        """Handlers running now, and free slots: sampled when the worker starts, at each
        claim (at least every ``poll_interval`` while idle) and at each heartbeat."""


Listener = Callable[[JobEvent], None]
M = TypeVar("M", bound=Callable[..., Any])


class Hooks:
    """What an app registered: middleware by phase (sync and async), event listeners by
    kind, and probes. ``App.middleware`` and ``App.on`` fill it; the client and the
    worker read it."""

    def __init__(self) -> None:
        self.enqueue: list[Callable[..., Any]] = []
        self.enqueue_async: list[Callable[..., Any]] = []
        self.execute: list[Callable[..., Any]] = []
        self.execute_async: list[Callable[..., Any]] = []
        self.listeners: dict[str, list[Listener]] = {}
        self.probes: list[Probe] = []

    def add_middleware(self, phase: Phase, middleware: M) -> M:
        if phase not in ("enqueue", "execute"):
            raise ConfigurationError(f"middleware phase must be 'enqueue' or 'execute', "
                                     f"not {phase!r}")
        if not callable(middleware):
            raise ConfigurationError(f"middleware must be callable, not {middleware!r}")
        chain = self.enqueue if phase == "enqueue" else self.execute
        if is_async(middleware):
            chain = self.enqueue_async if phase == "enqueue" else self.execute_async
        chain.append(middleware)
        return middleware

    def add_listener(self, kinds: Sequence[str], listener: Listener) -> Listener:
        unknown = sorted(set(kinds) - EVENT_KINDS)
        if unknown or not kinds:
            raise ConfigurationError(f"unknown event kind(s) {unknown or '(none given)'}; "
                                     f"known: {', '.join(sorted(EVENT_KINDS))}")
        if is_async(listener):
            raise ConfigurationError(
                "event listeners are plain functions, called where the event happens "
                "(often on the worker's event loop): hand slow or async work to a task")
        for kind in kinds:
            self.listeners.setdefault(kind, []).append(listener)
        return listener

    def wants(self, kind: str) -> bool:
        return kind in self.listeners

    def emit(self, event: JobEvent) -> None:
        for listener in self.listeners.get(event.kind, ()):
            try:
                listener(event)
            except Exception:
                log.exception("listener %r of %s events raised; ignored (job %s)",
                              listener, event.kind, event.job_id)


def is_async(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` (a function, a partial, or an object with ``__call__``) is async."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None))  # noqa: B004 - an object's async __call__


class _Once(Generic[T]):
    """The wrapped call, run at most once; keeps its result or exception, which stays
    the chain's result whatever the middleware around it does."""

    __slots__ = ("call", "error", "ran", "value", "what")

    def __init__(self, call: Callable[[], Any], what: str) -> None:
        self.call, self.what = call, what
        self.ran = False
        self.value: Any = None
        self.error: BaseException | None = None

    def __call__(self) -> T:
        if not self.ran:
            self.ran = True
            try:
                self.value = self.call()
            except BaseException as exc:
                self.error = exc
        return self.result()

    def result(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[no-any-return]

    def missed(self, failure: BaseException | None) -> bool:
        """Log what the chain did wrong; True when the call still has to run."""
        if failure is not None and failure is not self.error:
            log.error("%s middleware raised; ignored, the %s goes on", self.what, self.what,
                      exc_info=failure)
        elif not self.ran:
            log.error("%s middleware returned without calling call_next; calling it",
                      self.what)
        return not self.ran


class _AsyncOnce(_Once[T]):
    __slots__ = ()

    async def __call__(self) -> T:  # type: ignore[override]
        if not self.ran:
            self.ran = True
            try:
                self.value = await self.call()
            except BaseException as exc:
                self.error = exc
        return self.result()


def call_through(middleware: Sequence[Callable[..., Any]], call: Callable[[], T],
                 subject: Any, what: str) -> T:
    """``call()`` wrapped in ``middleware`` (sync), with the guarantees above."""
    if not middleware:
        return call()
    inner: _Once[T] = _Once(call, what)
    failure: BaseException | None = None
    try:
        _compose(middleware, inner, subject)()
    except BaseException as exc:
        failure = exc
    if inner.missed(failure):
        return inner()
    return inner.result()


async def acall_through(middleware: Sequence[Callable[..., Any]],
                        call: Callable[[], Awaitable[T]], subject: Any, what: str) -> T:
    """:func:`call_through` for async middleware. A cancellation always propagates (the
    worker then releases the job, or knows it lost its lease)."""
    if not middleware:
        return await call()
    inner: _AsyncOnce[T] = _AsyncOnce(call, what)
    failure: BaseException | None = None
    try:
        await _compose(middleware, inner, subject)()
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        failure = exc
    if inner.missed(failure):
        return await inner()
    return inner.result()


def _compose(middleware: Sequence[Callable[..., Any]], inner: Callable[[], Any],
             subject: Any) -> Callable[[], Any]:
    """The first middleware outermost, each given the next as its ``call_next``."""
    call_next = inner
    for mw in reversed(middleware):
        call_next = functools.partial(mw, call_next, subject)
    return call_next
