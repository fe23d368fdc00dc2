"""``Task``: a registered handler plus its enqueue defaults, and the enqueue entry points.

Enqueue validates every row and encodes its args here, before any SQL is sent, so bad
input is refused with a typed error and the caller's transaction is untouched; then it
hands the rows to the database layer (``db.enqueue``), which writes them.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeVar

from ..core.args import ArgsEncoder
from ..core.errors import ConfigurationError, InvalidOption, UnknownTask
from ..core.hooks import EnqueueCall, Hooks, JobEvent, acall_through, call_through
from ..core.limits import NO_KEY_LIMIT, KeyLimit
from ..core.options import JobOptions, unique_key
from ..core.types import Enqueued, JobResult, ResultSource
from ..db import enqueue
from ..db.enqueue import AnyStatement, NewJobs
from ..db.queries import Queries
from ..db.sessions import async_connection, sync_connection
from .config import Config

if TYPE_CHECKING:
    from ..db.sessions import AsyncConnectionLike, ConnectionLike

P = ParamSpec("P")
R = TypeVar("R")


class Host(Protocol):
    """What a task needs of its App: settings, statements, hooks and reliable push."""

    config: Config
    queries: Queries
    hooks: Hooks

    def _push(self, statement: AnyStatement) -> list[Enqueued]: ...

    def _definition(self, conn: Any, name: str) -> Mapping[str, Any] | None: ...

    async def _adefinition(self, aconn: Any, name: str) -> Mapping[str, Any] | None: ...

    async def _apush(self, statement: AnyStatement) -> list[Enqueued]: ...

    def wait(self, job_id: int, timeout: float | None = None) -> JobResult: ...

    async def wait_async(self, job_id: int, timeout: float | None = None) -> JobResult: ...


class Task(Generic[P, R]):
    """A registered handler plus enqueue defaults. Calling it runs the function directly."""

    __slots__ = ("app", "encoder", "fn", "limit", "name", "opts", "overrides", "retry_backoff",
                 "timeout")

    def __init__(
        self, app: Host, name: str, opts: JobOptions, fn: Callable[P, R] | None,
        encoder: ArgsEncoder | None = None,
    ) -> None:
        self.app = app
        self.name = name
        self.opts = opts
        self.fn = fn
        self.encoder = encoder or encoder_for(app.config.max_args_bytes, name, fn)
        self.timeout: float | None = None
        self.retry_backoff: Callable[[int], float] | None = None
        self.limit: KeyLimit | None = None
        self.overrides: dict[str, Any] | None = None
        """A reference by name only (``app.task(name)``): the options it was given, over
        the definition the registry holds, read at enqueue (None: a task with its own)."""

    def __repr__(self) -> str:
        return f"<pgjobs.Task {self.name} queue={self.opts.queue!r}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if self.fn is None:
            raise UnknownTask(f"{self.name!r} is a reference without a handler; enqueue it")
        return self.fn(*args, **kwargs)

    @property
    def is_async(self) -> bool:
        return self.fn is not None and inspect.iscoroutinefunction(self.fn)

    def options(self, **changes: Any) -> Task[P, R]:
        """A copy with other enqueue options: queue, priority, max_attempts, run_at,
        run_in, expires_at, expires_in, unique_for, unique_key, unique_until,
        on_duplicate, batch (see :class:`pgjobs.JobOptions`)."""
        copy = Task(self.app, self.name, self.opts.merge(changes), self.fn, self.encoder)
        copy.timeout, copy.retry_backoff = self.timeout, self.retry_backoff
        copy.limit = self.limit
        if self.overrides is not None:
            copy.overrides = {**self.overrides, **changes}
        return copy

    def defined(self, row: Mapping[str, Any] | None) -> Task[P, R]:
        """This reference with the definition ``row`` of the registry (None: pgjobs'
        defaults), under the options it was given: what a worker's own task would
        enqueue (queue, defaults, per-key limit)."""
        opts = self.opts  # no row: pgjobs' defaults under the given options, as before
        if row is not None:
            base = JobOptions(**{name: row[name] for name in DEFINED_OPTIONS})
            opts = base.merge(self.overrides or {})
        copy: Task[P, R] = Task(self.app, self.name, opts, None, self.encoder)
        if row is None:
            return copy
        if row["concurrency_limit"] is not None or row["rate_limit"] is not None:
            if row["concurrency_key"] is None:
                raise InvalidOption(
                    f"{self.name}: its per-key limit's key is computed by a Python callable "
                    "that this producer does not have; enqueue it where the task's code is "
                    "imported (or write the key as a format string of its arguments)")
            copy.limit = KeyLimit(row["concurrency_key"], row["concurrency_limit"],
                                  row["rate_limit"], row["rate_period"])
        return copy

    def enqueue(self, conn: ConnectionLike | None = None, /, **kwargs: Any) -> Enqueued:
        """Enqueue one job with keyword ``kwargs``.

        With ``conn``, the job is part of the caller's transaction: it is never committed
        here, becomes visible (and wakes workers) only when the caller commits, and
        vanishes on rollback. ``conn`` is a psycopg ``Connection``, a SQLAlchemy
        ``Session`` or ``Connection`` (psycopg 3 driver: ``postgresql+psycopg://``), or
        Django's ``connection`` (inside ``transaction.atomic()``): pgjobs runs on the
        psycopg connection underneath, in its current transaction (docs/sqlalchemy.md,
        docs/django.md). Without ``conn``, the job commits in a short transaction of the
        app's pool, retried across connection failures without ever enqueueing twice.
        """
        return self._send(conn, [kwargs])[0]

    def enqueue_many(
        self, conn: ConnectionLike | None, rows: Iterable[Mapping[str, Any]]
    ) -> list[Enqueued]:
        """Enqueue one job per mapping in ``rows`` with one statement; results in order.
        ``conn`` as in :meth:`enqueue`."""
        return self._send(conn, list(rows))

    async def enqueue_async(
        self, aconn: AsyncConnectionLike | None = None, /, **kwargs: Any
    ) -> Enqueued:
        """:meth:`enqueue` on a psycopg ``AsyncConnection`` or a SQLAlchemy
        ``AsyncSession`` / ``AsyncConnection`` (None: the app's async pool)."""
        return (await self._asend(aconn, [kwargs]))[0]

    async def enqueue_many_async(
        self, aconn: AsyncConnectionLike | None, rows: Iterable[Mapping[str, Any]]
    ) -> list[Enqueued]:
        """:meth:`enqueue_many` on what :meth:`enqueue_async` takes."""
        return await self._asend(aconn, list(rows))

    # Every enqueue: validate and encode (typed errors, before any SQL and before any
    # middleware), then write, inside the app's enqueue middleware when it has some.

    def _send(self, conn: ConnectionLike | None, rows: list[Mapping[str, Any]]
              ) -> list[Enqueued]:
        if self.overrides is not None and rows:  # by name: the registry's definition
            return self.defined(self.app._definition(sync_connection(conn), self.name)
                                )._send(conn, rows)
        jobs = self.new_jobs(rows)
        if not jobs.args:
            return []
        hooks = self.app.hooks
        if not hooks.enqueue and not hooks.wants("enqueued"):
            return self._write(conn, jobs)
        call = EnqueueCall(self.name, jobs.opts.queue, rows)
        results = call_through(hooks.enqueue, lambda: self._write(conn, with_meta(jobs, call)),
                               call, "enqueue")
        announce(hooks, call, results)
        return results

    async def _asend(self, aconn: AsyncConnectionLike | None, rows: list[Mapping[str, Any]]
                     ) -> list[Enqueued]:
        if self.overrides is not None and rows:  # by name: the registry's definition
            definition = await self.app._adefinition(await async_connection(aconn), self.name)
            return await self.defined(definition)._asend(aconn, rows)
        jobs = self.new_jobs(rows)
        if not jobs.args:
            return []
        hooks = self.app.hooks
        if not hooks.enqueue_async and not hooks.wants("enqueued"):
            return await self._awrite(aconn, jobs)
        call = EnqueueCall(self.name, jobs.opts.queue, rows)
        results = await acall_through(
            hooks.enqueue_async, lambda: self._awrite(aconn, with_meta(jobs, call)), call,
            "enqueue")
        announce(hooks, call, results)
        return results

    def _write(self, conn: ConnectionLike | None, jobs: NewJobs) -> list[Enqueued]:
        statement = enqueue.statement(self.app.queries, jobs)
        psycopg_conn = sync_connection(conn)
        if psycopg_conn is None:
            return attach(self.app, self.app._push(statement))
        return attach(self.app, statement.run(psycopg_conn))

    async def _awrite(self, aconn: AsyncConnectionLike | None, jobs: NewJobs
                      ) -> list[Enqueued]:
        statement = enqueue.statement(self.app.queries, jobs)
        psycopg_conn = await async_connection(aconn)
        if psycopg_conn is None:
            return attach(self.app, await self.app._apush(statement))
        return attach(self.app, await statement.arun(psycopg_conn))

    def limit_columns(self, kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
        """The per-key limit columns of one job with ``kwargs`` (computing its key)."""
        return NO_KEY_LIMIT if self.limit is None else self.limit.columns(self.name, kwargs)

    def new_jobs(self, rows: list[Mapping[str, Any]]) -> NewJobs:
        """Validate and encode ``rows`` (typed errors, before any SQL is sent)."""
        opts, limit, encode = self.opts, self.limit, self.encoder.encode
        config = self.app.config
        args = [encode(kwargs) for kwargs in rows]
        keys = None
        if limit is not None:
            keys = [limit.columns(self.name, kwargs)["concurrency_key"] for kwargs in rows]
        unique_keys = None
        if opts.unique:
            unique_keys = [unique_key(self.name, opts, kwargs) for kwargs in rows]
        return NewJobs(
            task=self.name, opts=opts, args=args, keys=keys,
            shared_limits=NO_KEY_LIMIT if limit is None else limit.shared_columns(),
            unique_keys=unique_keys, channel=config.channel if config.notify else None,
        )



DEFINED_OPTIONS = ("queue", "priority", "max_attempts", "run_at", "run_in", "expires_at",
                   "expires_in", "unique_for", "unique_key", "unique_until", "on_duplicate")
"""The ``JobOptions`` a task's row in the registry holds (db.sql.workers.task_register)."""


def attach(source: ResultSource, results: list[Enqueued]) -> list[Enqueued]:
    """``results``, each able to ``wait()`` through ``source`` (the App)."""
    for result in results:
        object.__setattr__(result, "source", source)  # frozen: set once, here
    return results


def with_meta(jobs: NewJobs, call: EnqueueCall) -> NewJobs:
    """``jobs`` carrying the meta enqueue middleware stored in ``call`` (JSON)."""
    if not call.meta:
        return jobs
    try:
        meta = json.dumps(call.meta, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidOption(f"the meta enqueue middleware stored for {jobs.task} is not "
                            f"JSON ({exc}); store plain str, int, float, bool, list, "
                            "dict") from None
    return replace(jobs, meta=meta)


def announce(hooks: Hooks, call: EnqueueCall, results: list[Enqueued]) -> None:
    """Tell the ``enqueued`` listeners about each new job (not the duplicates)."""
    if hooks.wants("enqueued"):
        for result in results:
            if not result.duplicate:
                hooks.emit(JobEvent("enqueued", result.id, call.task, call.queue, 0,
                                    "available", meta=call.meta))


def encoder_for(max_bytes: int | None, name: str, fn: Callable[..., Any] | None) -> ArgsEncoder:
    """An encoder that also checks kwargs against the handler's signature, when known."""
    if fn is None:
        return ArgsEncoder(max_bytes, task=name)
    params = inspect.signature(fn).parameters.values()
    kinds = inspect.Parameter
    for p in params:
        if p.kind in (kinds.POSITIONAL_ONLY, kinds.VAR_POSITIONAL) and (
            p.kind is kinds.VAR_POSITIONAL or p.default is p.empty
        ):
            raise ConfigurationError(
                f"{name}: job handlers take keyword arguments only; "
                f"parameter {p.name!r} cannot be passed by keyword"
            )
    takes_any = any(p.kind is kinds.VAR_KEYWORD for p in params)
    named = [p for p in params if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)]
    return ArgsEncoder(
        max_bytes,
        allowed=None if takes_any else frozenset(p.name for p in named),
        required=frozenset(p.name for p in named if p.default is p.empty),
        task=name,
    )
