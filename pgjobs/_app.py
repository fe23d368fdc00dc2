"""The App (configuration, task registry, connection pools) and Task (enqueue entry points)."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import timedelta
from typing import Any, Generic, ParamSpec, TypeVar, overload

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from . import _admin, _enqueue
from ._admin import JobChange
from ._batches import Batch, BatchStatus, create_batch, get_status
from ._db import TRANSIENT
from ._enqueue import (
    AnyStatement,
    ArgsEncoder,
    CopyStatement,
    Enqueued,
    JobOptions,
    SpecialRows,
    Statement,
    check_schema,
    check_task_name,
    job_params,
    many_rows,
    without_results,
)
from ._errors import (
    ConfigurationError,
    InvalidOption,
    MissingDatabaseURL,
    UnknownTask,
)
from ._limits import NO_KEY_LIMIT, KeyLimit
from ._periodic import Schedule, make_schedule
from ._queries import Queries

log = logging.getLogger("pgjobs")
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
    pool_timeout: float = 5.0
    """Seconds an enqueue without a connection waits for a pool connection per try."""
    push_retries: int = 5
    """Retries of an enqueue made without a connection when the connection fails
    (backoff 0.1 s doubling to 3 s). A receipt makes each retry safe: no duplicate jobs."""
    prepare: bool = True
    """Prepare statements on pgjobs' own connections. Turn off behind PgBouncer < 1.21 in
    transaction mode. Connections you pass in keep their own ``prepare_threshold``."""
    pgbouncer: bool = False
    """``dsn`` goes through a transaction-mode pooler such as PgBouncer (docs/pgbouncer.md):
    pgjobs' own connections prepare nothing and hold no session state, and workers LISTEN
    only on ``listen_dsn`` (without one they poll every ``poll_interval``)."""
    listen_dsn: str | None = None
    """A direct connection to PostgreSQL for workers' LISTEN (a pooler in transaction mode
    cannot hold one). None: ``PGJOBS_LISTEN_DSN`` at first use, else ``dsn`` unless
    ``pgbouncer`` is set."""

    notify: bool = True
    """NOTIFY workers when an enqueue commits, so an idle worker starts the job at once.
    PostgreSQL serialises notifying commits (a cluster-wide lock held through each one's
    WAL flush), so with many concurrent enqueuers False can raise their throughput; workers
    then find jobs by polling (``--poll-interval``)."""

    def __post_init__(self) -> None:
        check_schema(self.schema)
        if self.max_args_bytes is not None and self.max_args_bytes < 2:
            raise InvalidOption("max_args_bytes must be at least 2, or None for no limit")
        if self.pool_size < 1:
            raise InvalidOption("pool_size must be at least 1")
        if self.push_retries < 0:
            raise InvalidOption("push_retries cannot be negative")
        if self.pool_timeout <= 0:
            raise InvalidOption("pool_timeout must be positive")

    @property
    def prepare_threshold(self) -> int | None:
        """psycopg's ``prepare_threshold`` for pgjobs' own connections (None: never)."""
        return 0 if self.prepare and not self.pgbouncer else None

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
        self.schedules: dict[str, Schedule] = {}
        self._lock = threading.Lock()
        self._pool: ConnectionPool[AnyConnection] | None = None
        self._apool: AsyncConnectionPool[AnyAsyncConnection] | None = None
        self._alock = asyncio.Lock()

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
        ``expires_at`` / ``expires_in``, ``unique_for`` / ``unique_key`` /
        ``unique_until`` ("success" or "start") / ``on_duplicate`` ("return" or "raise"),
        and ``batch``; see :class:`pgjobs.JobOptions`. ``name`` defaults to
        ``module.qualname``; give one explicitly when producers enqueue by name or the
        module may move.

        Handler settings (used by the worker, not stored with the job): ``timeout``
        (seconds; an async handler is cancelled, a sync one is asked to stop through
        ``current_job().should_stop`` and its attempt fails when it returns) and
        ``retry_backoff`` (``attempt -> seconds`` before the next try).

        Per-key limits, enforced by the claim across all workers (docs/queues.md):
        ``concurrency_key`` (a format string over the job's arguments such as
        ``"customer:{customer_id}"``, or a callable of them; default: the task name),
        ``concurrency_limit`` (most running jobs per key) and ``rate_limit`` with
        ``rate_period`` (most starts per key in any window of that length).
        """
        timeout = options.pop("timeout", None)
        retry_backoff = options.pop("retry_backoff", None)
        if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
            raise InvalidOption(f"timeout must be a positive number of seconds, not {timeout!r}")
        if retry_backoff is not None and not callable(retry_backoff):
            raise InvalidOption("retry_backoff must be a callable: attempt -> seconds")

        def register(func: Callable[P, R]) -> Task[P, R]:
            default = f"{func.__module__}.{func.__qualname__}"
            task_name = check_task_name(default if name is None else name)
            if task_name in self.tasks:
                raise ConfigurationError(
                    f"task name {task_name!r} is registered twice; pass @app.job(name=...)"
                )
            task_options = dict(options)
            limit = KeyLimit.pop_options(task_name, task_options)
            task: Task[P, R] = Task(self, task_name, JobOptions().merge(task_options), func)
            task.timeout = None if timeout is None else float(timeout)
            task.retry_backoff = retry_backoff
            task.limit = limit
            self.tasks[task_name] = task
            return task

        return register if fn is None else register(fn)

    def periodic(
        self, cron: str, *, name: str | None = None, kwargs: Mapping[str, Any] | None = None,
        tz: str = "UTC", catch_up: str = "latest", catch_up_window: timedelta | None = None,
    ) -> Callable[[Task[P, R]], Task[P, R]]:
        """Enqueue the task below at every tick of ``cron`` (stack it above ``@app.job``).

        ``cron``: five fields, or six with seconds last (``"* * * * * */10"``), read in
        ``tz``. ``name`` (default: the task's name) identifies the schedule in the
        ``periodic`` table; give one per schedule when a task has several. ``kwargs``: the
        job's arguments. ``catch_up``: what happens to ticks missed while no worker ran:
        ``"latest"`` enqueues the newest once, ``"skip"`` none (only ticks found less than
        a minute late run), ``"all"`` every one within ``catch_up_window`` (default one
        hour). Every worker process enqueues due ticks, each exactly once.
        """

        def register(task: Task[P, R]) -> Task[P, R]:
            self.schedule(task, cron, name=name, kwargs=kwargs, tz=tz, catch_up=catch_up,
                          catch_up_window=catch_up_window)
            return task

        return register

    def schedule(
        self, task: Task[..., Any], cron: str, *, name: str | None = None,
        kwargs: Mapping[str, Any] | None = None, tz: str = "UTC", catch_up: str = "latest",
        catch_up_window: timedelta | None = None,
    ) -> Schedule:
        """:meth:`periodic` as a call: ``app.schedule(task, "0 * * * *", ...)``."""
        if isinstance(task, Task) and task.app is not self:
            raise ConfigurationError(f"{task.name} belongs to another App; schedule it there")
        entry = make_schedule(task, cron, name=name, kwargs=kwargs, tz=tz, catch_up=catch_up,
                              catch_up_window=catch_up_window)
        if entry.name in self.schedules:
            raise ConfigurationError(
                f"periodic schedule {entry.name!r} is declared twice; give each one a "
                "name=... of its own"
            )
        self.schedules[entry.name] = entry
        return entry

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

    @property
    def listen_dsn(self) -> str | None:
        """Where workers LISTEN (see :attr:`Config.listen_dsn`); None: nowhere, poll."""
        direct = self.config.listen_dsn or os.environ.get("PGJOBS_LISTEN_DSN")
        if direct:
            return direct
        return None if self.config.pgbouncer else self.dsn

    def connect(self, **kwargs: Any) -> AnyConnection:
        """A new connection to the app's database, configured like the pool's."""
        kwargs.setdefault("prepare_threshold", self.config.prepare_threshold)
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
                    kwargs={"prepare_threshold": self.config.prepare_threshold},
                    # A pooled connection may have died while idle (server restarted,
                    # backend terminated): test it on checkout, replace it if dead.
                    check=ConnectionPool.check_connection,
                    name="pgjobs",
                    open=True,
                )
            return self._pool

    async def apool(self) -> AsyncConnectionPool[AnyAsyncConnection]:
        """The async twin of :attr:`pool`, opened on first use."""
        async with self._alock:
            return await self._open_apool()

    async def _open_apool(self) -> AsyncConnectionPool[AnyAsyncConnection]:
        if self._apool is None:
            pool: AsyncConnectionPool[AnyAsyncConnection] = AsyncConnectionPool(
                self.dsn,
                min_size=1,
                max_size=self.config.pool_size,
                kwargs={"prepare_threshold": self.config.prepare_threshold},
                check=AsyncConnectionPool.check_connection,
                name="pgjobs-async",
                open=False,
            )
            await pool.open()
            self._apool = pool
        return self._apool

    # -- reliable push ------------------------------------------------------------------

    def _push(self, statement: AnyStatement) -> list[Enqueued]:
        """Run ``statement`` in its own transaction on the pool, retrying transient
        connection failures. A receipt committed with the jobs lets a retry after an
        unknown commit outcome return the first try's jobs instead of enqueueing again."""
        receipt = Receipt(self.queries)
        for attempt in range(self.config.push_retries + 1):
            try:
                with self.pool.connection(timeout=self.config.pool_timeout) as conn:
                    if attempt:
                        found = receipt.found(conn.execute(*receipt.get()).fetchone())
                        if found is not None:
                            return found
                    results = statement.run(conn)
                    conn.execute(*receipt.put(results))
                return results
            except psycopg.errors.UniqueViolation:
                if not attempt:
                    raise
                # An earlier try committed while this one ran: the next finds its receipt.
                continue
            except (*TRANSIENT, PoolTimeout) as exc:
                time.sleep(self._push_wait(attempt, exc))
        raise AssertionError("unreachable")

    def _push_wait(self, attempt: int, exc: BaseException) -> float:
        """After try ``attempt`` failed with ``exc``: raise it once the retries are spent,
        else return the seconds to wait before the next try."""
        if attempt == self.config.push_retries:
            raise exc
        log.warning("enqueue failed (%s); retrying (%d)", exc, attempt + 1)
        return push_backoff(attempt)

    async def _apush(self, statement: AnyStatement) -> list[Enqueued]:
        """:meth:`_push` on the async pool."""
        receipt = Receipt(self.queries)
        pool = await self.apool()
        for attempt in range(self.config.push_retries + 1):
            try:
                async with pool.connection(timeout=self.config.pool_timeout) as conn:
                    if attempt:
                        cursor = await conn.execute(*receipt.get())
                        found = receipt.found(await cursor.fetchone())
                        if found is not None:
                            return found
                    results = await statement.arun(conn)
                    await conn.execute(*receipt.put(results))
                return results
            except psycopg.errors.UniqueViolation:
                if not attempt:
                    raise
                # An earlier try committed while this one ran: the next finds its receipt.
                continue
            except (*TRANSIENT, PoolTimeout) as exc:
                await asyncio.sleep(self._push_wait(attempt, exc))
        raise AssertionError("unreachable")

    # -- batches -----------------------------------------------------------------------

    def batch(
        self, conn: AnyConnection, description: str | None = None, *,
        parent: Batch | int | None = None, batch_id: int | None = None,
    ) -> Batch:
        """A new batch in ``conn``'s transaction (or, with ``batch_id``, an existing one,
        e.g. from one of its own jobs to add more work)."""
        if batch_id is not None:
            get_status(self, conn, batch_id)
            return Batch(self, conn, batch_id)
        parent_id = parent.id if isinstance(parent, Batch) else parent
        return create_batch(self, conn, description, parent_id)

    def batch_status(self, conn: AnyConnection | None, batch_id: int) -> BatchStatus:
        """A batch's counters and state (None: read on the app's pool)."""
        if conn is None:
            with self.pool.connection() as own:
                return get_status(self, own, batch_id)
        return get_status(self, conn, batch_id)

    # -- operator actions --------------------------------------------------------------

    def cancel_jobs(self, conn: AnyConnection | None, ids: Iterable[int],
                    reason: str | None = None) -> list[JobChange]:
        """Cancel waiting and running jobs, in ``conn``'s transaction (None: in one of
        its own). A running job's handler is stopped by its worker at the next heartbeat
        (within a third of the lease) and nothing it writes through pgjobs counts. One
        :class:`JobChange` per id, in id order."""
        return _admin.run(self, conn, _admin.cancel_jobs, ids, reason)

    def retry_jobs(self, conn: AnyConnection | None, ids: Iterable[int]) -> list[JobChange]:
        """Run dead, cancelled and expired jobs again, now (and jobs waiting for a retry,
        at once), keeping their errors and attempts, with room for one more attempt (see
        docs/jobs.md). One :class:`JobChange` per id, in id order."""
        return _admin.run(self, conn, _admin.retry_jobs, ids)

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

    __slots__ = ("app", "encoder", "fn", "limit", "name", "opts", "retry_backoff", "timeout")

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
        self.limit: KeyLimit | None = None

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
        return copy

    def enqueue(self, conn: AnyConnection | None = None, /, **kwargs: Any) -> Enqueued:
        """Enqueue one job with keyword ``kwargs``.

        With ``conn``, the job is part of the caller's transaction: it is never committed
        here, becomes visible (and wakes workers) only when the caller commits, and
        vanishes on rollback. Without, it commits in a short transaction of the app's
        pool, retried across connection failures without ever enqueueing twice.
        """
        statement = self._statement([kwargs])
        if conn is None:
            return self.app._push(statement)[0]
        return statement.run(conn)[0]

    def _limits(self, kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
        return NO_KEY_LIMIT if self.limit is None else self.limit.columns(self.name, kwargs)

    def _concurrency_keys(self, rows: list[Mapping[str, Any]]) -> list[str | None] | None:
        """Each row's concurrency key (None: this task has no per-key limit)."""
        if self.limit is None:
            return None
        return [self._limits(kw)["concurrency_key"] for kw in rows]

    def _limit_values(self) -> Mapping[str, Any]:
        """The per-key limit columns shared by every job of this task (key aside)."""
        if self.limit is None:
            return NO_KEY_LIMIT
        return {"concurrency_key": None, "concurrency_limit": self.limit.concurrency_limit,
                "rate_limit": self.limit.rate_limit, "rate_period": self.limit.rate_period}

    def enqueue_many(
        self, conn: AnyConnection | None, rows: Iterable[Mapping[str, Any]]
    ) -> list[Enqueued]:
        """Enqueue one job per mapping in ``rows`` with one statement; results in order."""
        statement = self._statement(list(rows))
        if not statement.size:
            return []
        if conn is None:
            return self.app._push(statement)
        return statement.run(conn)

    async def enqueue_async(
        self, aconn: AnyAsyncConnection | None = None, /, **kwargs: Any
    ) -> Enqueued:
        """:meth:`enqueue` on a psycopg ``AsyncConnection`` (None: the app's async pool)."""
        statement = self._statement([kwargs])
        if aconn is None:
            return (await self.app._apush(statement))[0]
        return (await statement.arun(aconn))[0]

    async def enqueue_many_async(
        self, aconn: AnyAsyncConnection | None, rows: Iterable[Mapping[str, Any]]
    ) -> list[Enqueued]:
        """:meth:`enqueue_many` on a psycopg ``AsyncConnection``."""
        statement = self._statement(list(rows))
        if not statement.size:
            return []
        if aconn is None:
            return await self.app._apush(statement)
        return await statement.arun(aconn)

    def _statement(self, rows: list[Mapping[str, Any]], copy: bool = True) -> AnyStatement:
        """Validate every row and build the statement that enqueues them."""
        app, opts, encode = self.app, self.opts, self.encoder.encode
        channel = app.config.channel if app.config.notify else None
        if copy and len(rows) >= _enqueue.COPY_MIN_ROWS and not opts.unique:
            keys = self._concurrency_keys(rows)
            params = job_params(self.name, opts, "", channel)
            params.update(sequence=app.queries.sequence, n=len(rows), batch_id=opts.batch_id)
            return CopyStatement(self, params, [encode(kw) for kw in rows], keys, rows)
        if opts.special:
            special = SpecialRows()
            for kwargs in rows:
                special.add(self.name, opts, encode(kwargs), kwargs, self._limits(kwargs))
            params = special.params(channel, app.queries.sequence, opts.batch_id)
            return Statement(self, app.queries.job_insert_special, params, len(rows),
                             special.results, special.input_keys)
        if len(rows) == 1:
            params = job_params(self.name, opts, encode(rows[0]), channel,
                                self._limits(rows[0]))
            return Statement(self, app.queries.job_insert, params, 1, without_results)
        params = job_params(self.name, opts, "", channel, self._limit_values())
        params["rows"] = many_rows([encode(kw) for kw in rows], self._concurrency_keys(rows))
        return Statement(self, app.queries.job_insert_many, params, len(rows), without_results)


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


def push_backoff(attempt: int) -> float:
    return float(min(3.0, 0.1 * 2**attempt))


class Receipt:
    """The reliable-push receipt of one connectionless enqueue call."""

    def __init__(self, queries: Queries) -> None:
        self.queries = queries
        self.key = uuid.uuid4()

    def get(self) -> tuple[sql.SQL | sql.Composed, dict[str, Any]]:
        return self.queries.enqueue_receipt_get, {"key": self.key}

    def put(self, results: list[Enqueued]) -> tuple[sql.SQL | sql.Composed, dict[str, Any]]:
        encoded = json.dumps([[r.id, r.duplicate] for r in results])
        return self.queries.enqueue_receipt_put, {"key": self.key, "results": encoded}

    @staticmethod
    def found(row: tuple[Any, ...] | None) -> list[Enqueued] | None:
        if row is None:
            return None
        return [Enqueued(int(job_id), bool(dup)) for job_id, dup in row[0]]
