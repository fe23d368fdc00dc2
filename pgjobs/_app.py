"""The App (configuration, task registry, connection pools) and Task (enqueue entry points)."""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Generic, ParamSpec, TypeVar, overload

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from ._enqueue import (
    ArgsEncoder,
    Enqueued,
    JobOptions,
    Rows,
    check_schema,
    check_task_name,
    job_params,
    translated_errors,
)
from ._errors import ConfigurationError, InvalidOption, MissingDatabaseURL, UnknownTask
from ._queries import Queries

P = ParamSpec("P")
R = TypeVar("R")
AnyConnection = psycopg.Connection[Any]
AnyAsyncConnection = psycopg.AsyncConnection[Any]


@dataclass(frozen=True, slots=True)
class Config:
    """Settings of an :class:`App`; every field is also an ``App(...)`` keyword."""

    dsn: str | None = None
    """libpq URL or key=value string. None: ``PGJOBS_DATABASE_URL`` at first use."""
    schema: str = "pgjobs"
    """Schema holding pgjobs' tables (``PGJOBS_SCHEMA`` for the CLI)."""
    max_args_bytes: int | None = 1_048_576
    """Largest encoded args accepted by enqueue, in bytes. None: no limit."""
    pool_size: int = 4
    """Connections in the app's own pool, used by enqueue calls made without a connection."""
    prepare: bool = True
    """Prepare statements on pgjobs' own connections. Turn off behind PgBouncer < 1.21 in
    transaction mode. Connections you pass in keep their own ``prepare_threshold``."""

    def __post_init__(self) -> None:
        check_schema(self.schema)
        if self.max_args_bytes is not None and self.max_args_bytes < 2:
            raise InvalidOption("max_args_bytes must be at least 2, or None for no limit")
        if self.pool_size < 1:
            raise InvalidOption("pool_size must be at least 1")

    @property
    def channel(self) -> str:
        """The LISTEN/NOTIFY channel that wakes this schema's workers."""
        return f"pgjobs_{self.schema}"


SETTING_NAMES = frozenset(f.name for f in fields(Config)) - {"dsn", "schema"}


class App:
    """A pgjobs application: its database, its schema and its registered tasks.

    ``App(dsn=None, schema="pgjobs")``; ``dsn`` defaults to ``PGJOBS_DATABASE_URL``.
    Create one per process, at import time, and decorate handlers with :meth:`job`.
    """

    def __init__(self, dsn: str | None = None, schema: str = "pgjobs", **settings: Any) -> None:
        unknown = set(settings) - SETTING_NAMES
        if unknown:
            raise InvalidOption(
                f"unknown App setting(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(SETTING_NAMES))}"
            )
        self.config = Config(dsn=dsn, schema=schema, **settings)
        self.queries = Queries(schema)
        self.tasks: dict[str, Task[Any, Any]] = {}
        self._lock = threading.Lock()
        self._pool: ConnectionPool[AnyConnection] | None = None
        self._apool: AsyncConnectionPool[AnyAsyncConnection] | None = None

    def __repr__(self) -> str:
        return f"<pgjobs.App schema={self.config.schema!r} tasks={len(self.tasks)}>"

    # -- tasks -----------------------------------------------------------------------

    @overload
    def job(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    @overload
    def job(
        self, fn: None = None, /, *, name: str | None = None, **options: Any
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def job(
        self, fn: Callable[P, R] | None = None, /, *, name: str | None = None, **options: Any
    ) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
        """Register ``fn`` as a task: ``@app.job`` or ``@app.job(queue="mail", ...)``.

        Options (the defaults of every enqueue of this task): ``queue`` ("default"),
        ``priority`` (0, lower first), ``max_attempts`` (25), ``run_at`` / ``run_in``,
        ``expires_at`` / ``expires_in``. ``name`` defaults to ``module.qualname``; give
        one explicitly when producers enqueue by name or the module may move.

        Handler settings (used by the worker, not stored with the job): ``timeout``
        (seconds; an async handler is cancelled, a sync one is asked to stop through
        ``current_job().should_stop`` and its attempt fails when it returns) and
        ``retry_backoff`` (``attempt -> seconds`` before the next try).
        """
        timeout = options.pop("timeout", None)
        retry_backoff = options.pop("retry_backoff", None)
        if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
            raise InvalidOption(f"timeout must be a positive number of seconds, not {timeout!r}")
        if retry_backoff is not None and not callable(retry_backoff):
            raise InvalidOption("retry_backoff must be a callable: attempt -> seconds")

        def register(func: Callable[P, R]) -> Task[P, R]:
            task_name = check_task_name(name or f"{func.__module__}.{func.__qualname__}")
            if task_name in self.tasks:
                raise ConfigurationError(
                    f"task name {task_name!r} is registered twice; pass @app.job(name=...)"
                )
            task: Task[P, R] = Task(self, task_name, JobOptions().merge(options), func)
            task.timeout = None if timeout is None else float(timeout)
            task.retry_backoff = retry_backoff
            self.tasks[task_name] = task
            return task

        return register if fn is None else register(fn)

    def task(self, name: str, **options: Any) -> Task[..., Any]:
        """The task called ``name``: the registered one, or a reference for producers that
        do not import the handler (give its ``queue`` and other defaults here)."""
        registered = self.tasks.get(name)
        if registered is not None:
            return registered.options(**options) if options else registered
        return Task(self, check_task_name(name), JobOptions().merge(options), None)

    def get_task(self, name: str) -> Task[..., Any]:
        try:
            return self.tasks[name]
        except KeyError:
            raise UnknownTask(
                f"no task named {name!r} is registered in this app; registered: "
                f"{', '.join(sorted(self.tasks)) or 'none'}"
            ) from None

    def enqueue(
        self, conn: AnyConnection | None, task_name: str, /, **kwargs: Any
    ) -> Enqueued:
        """Enqueue ``task_name`` with keyword ``kwargs`` on ``conn`` (None: own transaction)."""
        return self.task(task_name).enqueue(conn, **kwargs)

    # -- connections -----------------------------------------------------------------

    @property
    def dsn(self) -> str:
        dsn = self.config.dsn or os.environ.get("PGJOBS_DATABASE_URL")
        if not dsn:
            raise MissingDatabaseURL()
        return dsn

    def connect(self, **kwargs: Any) -> AnyConnection:
        """A new connection to the app's database, configured like the pool's."""
        kwargs.setdefault("prepare_threshold", 0 if self.config.prepare else None)
        return psycopg.connect(self.dsn, **kwargs)

    @property
    def pool(self) -> ConnectionPool[AnyConnection]:
        """The app's own pool (opened on first use) for enqueue calls without a connection."""
        with self._lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self.dsn,
                    min_size=1,
                    max_size=self.config.pool_size,
                    kwargs={"prepare_threshold": 0 if self.config.prepare else None},
                    # A pooled connection may have died while idle (server restarted,
                    # backend terminated): test it on checkout, replace it if dead.
                    check=ConnectionPool.check_connection,
                    name="pgjobs",
                    open=True,
                )
            return self._pool

    async def apool(self) -> AsyncConnectionPool[AnyAsyncConnection]:
        """The async twin of :attr:`pool`, opened on first use."""
        if self._apool is None:
            pool: AsyncConnectionPool[AnyAsyncConnection] = AsyncConnectionPool(
                self.dsn,
                min_size=1,
                max_size=self.config.pool_size,
                kwargs={"prepare_threshold": 0 if self.config.prepare else None},
                check=AsyncConnectionPool.check_connection,
                name="pgjobs-async",
                open=False,
            )
            await pool.open()
            self._apool = pool
        return self._apool

    def close(self) -> None:
        """Close the app's sync pool (the async one closes with :meth:`aclose`)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    async def aclose(self) -> None:
        self.close()
        apool, self._apool = self._apool, None
        if apool is not None:
            await apool.close()


class Task(Generic[P, R]):
    """A registered handler plus enqueue defaults. Calling it runs the function directly."""

    __slots__ = ("app", "encoder", "fn", "name", "opts", "retry_backoff", "timeout")

    def __init__(
        self, app: App, name: str, opts: JobOptions, fn: Callable[P, R] | None,
        encoder: ArgsEncoder | None = None,
    ) -> None:
        self.app = app
        self.name = name
        self.opts = opts
        self.fn = fn
        self.encoder = encoder or _encoder_for(app, name, fn)
        self.timeout: float | None = None
        self.retry_backoff: Callable[[int], float] | None = None

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
        run_in, expires_at, expires_in."""
        copy = Task(self.app, self.name, self.opts.merge(changes), self.fn, self.encoder)
        copy.timeout, copy.retry_backoff = self.timeout, self.retry_backoff
        return copy

    def enqueue(self, conn: AnyConnection | None = None, /, **kwargs: Any) -> Enqueued:
        """Enqueue one job with keyword ``kwargs``.

        With ``conn``, the job is part of the caller's transaction: it is never committed
        here, becomes visible (and wakes workers) only when the caller commits, and
        vanishes on rollback. Without, it commits in a short transaction of the app's pool.
        """
        params = self._params(kwargs)
        if conn is None:
            with self.app.pool.connection() as own:
                return self._insert(own, params)
        return self._insert(conn, params)

    def _params(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        return job_params(
            self.name, self.opts, self.encoder.encode(kwargs), self.app.config.channel
        )

    def _insert(self, conn: AnyConnection, params: dict[str, Any]) -> Enqueued:
        with translated_errors(self.app.config.schema):
            row = conn.execute(self.app.queries.job_insert, params).fetchone()
        assert row is not None
        return Enqueued(row[0])

    def enqueue_many(
        self, conn: AnyConnection | None, rows: Iterable[Mapping[str, Any]]
    ) -> list[Enqueued]:
        """Enqueue one job per mapping in ``rows`` with one statement; results in order."""
        batch = self._rows(rows)
        if not len(batch):
            return []
        params = batch.params(self.app.config.channel)
        if conn is None:
            with self.app.pool.connection() as own:
                return self._insert_many(own, params)
        return self._insert_many(conn, params)

    def _rows(self, rows: Iterable[Mapping[str, Any]]) -> Rows:
        batch = Rows()
        encode = self.encoder.encode
        for kwargs in rows:
            batch.add(self.name, self.opts, encode(kwargs))
        return batch

    def _insert_many(self, conn: AnyConnection, params: dict[str, Any]) -> list[Enqueued]:
        with translated_errors(self.app.config.schema):
            ids = conn.execute(self.app.queries.job_insert_many, params).fetchall()
        return [Enqueued(row[0]) for row in ids]

    async def enqueue_async(
        self, aconn: AnyAsyncConnection | None = None, /, **kwargs: Any
    ) -> Enqueued:
        """:meth:`enqueue` on a psycopg ``AsyncConnection`` (None: the app's async pool)."""
        params = self._params(kwargs)
        if aconn is None:
            async with (await self.app.apool()).connection() as own:
                return await self._insert_async(own, params)
        return await self._insert_async(aconn, params)

    async def _insert_async(self, aconn: AnyAsyncConnection, params: dict[str, Any]) -> Enqueued:
        with translated_errors(self.app.config.schema):
            cursor = await aconn.execute(self.app.queries.job_insert, params)
            row = await cursor.fetchone()
        assert row is not None
        return Enqueued(row[0])


def _encoder_for(app: App, name: str, fn: Callable[..., Any] | None) -> ArgsEncoder:
    """An encoder that also checks kwargs against the handler's signature, when known."""
    limit = app.config.max_args_bytes
    if fn is None:
        return ArgsEncoder(limit, task=name)
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
        limit,
        allowed=None if takes_any else frozenset(p.name for p in named),
        required=frozenset(p.name for p in named if p.default is p.empty),
        task=name,
    )


Handler = Callable[..., Any] | Callable[..., Awaitable[Any]]
