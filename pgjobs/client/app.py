"""The App: configuration, task registry, connection pools, and the calls an application
makes that are not a task's own (enqueue by name, batches, operator actions)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from ..core.errors import (
    ConfigurationError,
    InvalidOption,
    MissingDatabaseURL,
    SchemaNotReady,
    UnknownTask,
)
from ..core.hooks import EventKind, Hooks, Listener, Phase
from ..core.limits import KeyLimit
from ..core.names import check_task_name, did_you_mean
from ..core.options import JobOptions
from ..core.schedule import Schedule
from ..core.types import BatchStatus, Enqueued, JobChange, JobResult
from ..db import jobs, workers
from ..db.enqueue import AnyStatement
from ..db.queries import Queries
from ..db.sessions import sync_connection
from . import admin, periodic, push, results
from .batches import Batch, create_batch, get_status
from .config import SETTING_NAMES, Config
from .periodic import make_schedule
from .task import Task

if TYPE_CHECKING:
    from ..db.sessions import ConnectionLike

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
M = TypeVar("M", bound=Callable[..., Any])
AnyConnection = psycopg.Connection[Any]
AnyAsyncConnection = psycopg.AsyncConnection[Any]


DEFINITION_TTL = 60.0
"""Seconds a task's definition read from the registry is reused by enqueues by name (a
deploy that changes a task's queue or limits reaches such producers within this)."""


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
        self.hooks = Hooks()
        """Registered middleware, event listeners and probes (see :meth:`middleware`)."""
        self._lock = threading.Lock()
        self._pool: ConnectionPool[AnyConnection] | None = None
        self._apool: AsyncConnectionPool[AnyAsyncConnection] | None = None
        self._alock = asyncio.Lock()
        self._definitions: dict[str, tuple[Mapping[str, Any] | None, float]] = {}

    def __repr__(self) -> str:
        return f"<pgjobs.App schema={self.config.schema!r} tasks={len(self.tasks)}>"

    def __copy__(self) -> App:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> App:
        """An App owns pools and locks: a copy is the same App (so that, e.g.,
        ``dataclasses.asdict`` of an ``Enqueued``, which refers to its App, works)."""
        return self

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
        hour). Every worker process that serves the job's queue enqueues due ticks,
        each exactly once; a worker of other queues never ticks it."""

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

    # -- extension points --------------------------------------------------------------

    def middleware(self, phase: Phase) -> Callable[[M], M]:
        """Register a middleware around every ``"enqueue"`` or every ``"execute"``.

        ``mw(call_next, subject)`` calls ``call_next()`` once and returns its result; the
        subject is an :class:`pgjobs.EnqueueCall` (task, queue, args, and a ``meta``
        dict stored with the jobs) or the running job's :class:`pgjobs.JobContext`. A
        plain ``def`` wraps sync enqueues and sync handlers (in the handler's thread);
        an ``async def`` wraps ``enqueue_async`` and async handlers (on the worker's
        loop): register one of each to wrap both. The first registered is outermost.
        A middleware that raises, or does not call ``call_next``, is logged and the
        enqueue or handler runs anyway; its result or exception is never replaced.
        Register before the worker starts. See docs/observability.md.
        """

        def register(middleware: M) -> M:
            return self.hooks.add_middleware(phase, middleware)

        return register

    def on(self, *kinds: EventKind) -> Callable[[Listener], Listener]:
        """Register a plain function called with a :class:`pgjobs.JobEvent` at each of
        ``kinds``: enqueued, started, succeeded, retried, died, cancelled, snoozed,
        released, lease_lost, expired, reclaimed. It runs where the event happens (the
        enqueuing thread, the worker's event loop): keep it quick. One that raises is
        logged and changes nothing."""

        def register(listener: Listener) -> Listener:
            return self.hooks.add_listener(kinds, listener)

        return register

    def task(self, name: str, **options: Any) -> Task[..., Any]:
        """The task called ``name``: the registered one, or a reference for producers that
        do not import the handler (give its ``queue`` and other defaults here).

        A reference is refused with :class:`pgjobs.UnknownTask` (naming close matches)
        when this App has registered tasks of its own, unless it was created with
        ``strict_names=False``: a name none of them has is most likely a typo."""
        registered = self.tasks.get(name)
        if registered is not None:
            return registered.options(**options) if options else registered
        reference: Task[..., Any] = Task(self, check_task_name(name),
                                         JobOptions().merge(options), None)
        reference.overrides = dict(options)  # the rest comes from the registry at enqueue
        if self.tasks and self.config.strict_names:
            # A job no worker can run would be retried for weeks: refuse it here, where
            # the typo is made. A pure producer (no tasks registered) is not checked.
            raise UnknownTask(
                f"no task named {name!r} is registered in this app{did_you_mean(name, self.tasks)}"
                " (a producer that does not import the workers' code: "
                "App(..., strict_names=False))"
            )
        return reference

    def _definition(self, conn: AnyConnection | None, name: str) -> Mapping[str, Any] | None:
        """Task ``name``'s definition in the registry the workers fill (None: no worker
        registered it), read on ``conn`` (None: the pool) and kept DEFINITION_TTL
        seconds."""
        cached = self._cached_definition(name)
        if cached is not None:
            return cached[0]
        query = workers.definition(self.queries, name)
        try:
            if conn is None:
                found = push.read(self.pool, query, self.config.push_retries,
                                  self.config.pool_timeout)
            else:
                # a savepoint: a schema from before the registry (revision 0012) must not
                # abort the caller's transaction
                with conn.transaction():
                    found = query.run(conn)
        except SchemaNotReady:
            found = None  # pgjobs' defaults, as before the registry
        self._definitions[name] = (found, time.monotonic())
        return found

    def _cached_definition(self, name: str) -> tuple[Mapping[str, Any] | None] | None:
        """Task ``name``'s registry definition read less than DEFINITION_TTL seconds ago,
        in a 1-tuple (its value may be None: no worker registered it), or None."""
        cached = self._definitions.get(name)
        if cached is not None and time.monotonic() - cached[1] < DEFINITION_TTL:
            return (cached[0],)
        return None

    async def _adefinition(self, aconn: AnyAsyncConnection | None, name: str
                           ) -> Mapping[str, Any] | None:
        """:meth:`_definition` on an async connection (None: the async pool)."""
        cached = self._cached_definition(name)
        if cached is not None:
            return cached[0]
        query = workers.definition(self.queries, name)
        try:
            if aconn is None:
                found = await push.aread(await self.apool(), query, self.config.push_retries,
                                         self.config.pool_timeout)
            else:
                async with aconn.transaction():
                    found = await query.arun(aconn)
        except SchemaNotReady:
            found = None
        self._definitions[name] = (found, time.monotonic())
        return found

    def get_task(self, name: str) -> Task[..., Any]:
        try:
            return self.tasks[name]
        except KeyError:
            raise UnknownTask(
                f"no task named {name!r} is registered in this app"
                f"{did_you_mean(name, self.tasks)}; registered: "
                f"{', '.join(sorted(self.tasks)) or 'none'}"
            ) from None

    def enqueue(
        self, conn: ConnectionLike | None, task_name: str, /, **kwargs: Any
    ) -> Enqueued:
        """Enqueue ``task_name`` with keyword ``kwargs`` on ``conn`` (None: own transaction;
        a SQLAlchemy session or Django's connection as in :meth:`Task.enqueue`).

        ``task_name`` must be registered in this App when it has registered tasks
        (:class:`pgjobs.UnknownTask` names the close matches); see :meth:`task` and
        ``strict_names``."""
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
        """Run ``statement`` in its own short transaction on the pool (``client.push``)."""
        config = self.config
        return push.push(self.pool, self.queries, statement, config.push_retries,
                         config.pool_timeout)

    async def _apush(self, statement: AnyStatement) -> list[Enqueued]:
        """:meth:`_push` on the async pool."""
        config = self.config
        return await push.apush(await self.apool(), self.queries, statement,
                                config.push_retries, config.pool_timeout)

    # -- batches -----------------------------------------------------------------------

    def batch(
        self, conn: ConnectionLike, description: str | None = None, *,
        parent: Batch | int | None = None, batch_id: int | None = None,
    ) -> Batch:
        """A new batch in ``conn``'s transaction (or, with ``batch_id``, an existing one,
        e.g. from one of its own jobs to add more work). ``conn`` may be a SQLAlchemy
        ``Session`` or ``Connection`` or Django's connection, as in :meth:`Task.enqueue`."""
        psycopg_conn = _required(conn)
        if batch_id is not None:
            get_status(self, psycopg_conn, batch_id)
            return Batch(self, psycopg_conn, batch_id)
        parent_id = parent.id if isinstance(parent, Batch) else parent
        return create_batch(self, psycopg_conn, description, parent_id)

    def batch_status(self, conn: ConnectionLike | None, batch_id: int) -> BatchStatus:
        """A batch's counters and state (None: read on the app's pool)."""
        psycopg_conn = sync_connection(conn)
        if psycopg_conn is None:
            with self.pool.connection() as own:
                return get_status(self, own, batch_id)
        return get_status(self, psycopg_conn, batch_id)

    # -- operator actions --------------------------------------------------------------

    def cancel_jobs(self, conn: ConnectionLike | None, ids: Iterable[int],
                    reason: str | None = None) -> list[JobChange]:
        """Cancel waiting and running jobs, in ``conn``'s transaction (None: in one of
        its own). A running job's handler is stopped by its worker at the next heartbeat
        (within a third of the lease) and nothing it writes through pgjobs counts. One
        :class:`JobChange` per id, in id order."""
        return self._run(conn, lambda c: admin.cancel_jobs(self.queries, c, ids, reason))

    def retry_jobs(self, conn: ConnectionLike | None, ids: Iterable[int]) -> list[JobChange]:
        """Run dead, cancelled and expired jobs again, now (and jobs waiting for a retry,
        at once), keeping their errors and attempts, with room for one more attempt (see
        docs/jobs.md). One :class:`JobChange` per id, in id order."""
        channel = self.config.channel
        return self._run(conn, lambda c: admin.retry_jobs(self.queries, c, ids, channel))

    def pause_periodic(self, conn: ConnectionLike | None, name: str) -> None:
        """Pause periodic schedule ``name`` (in ``conn``'s transaction, or None: one of
        its own): its ticks are recorded as skipped and enqueue nothing until
        :meth:`resume_periodic`. It stays paused across worker restarts and deploys.
        Raises :class:`pgjobs.ScheduleNotFound` for an unknown name."""
        self._run(conn, lambda c: periodic.pause(self.queries, c, name))

    def resume_periodic(self, conn: ConnectionLike | None, name: str) -> None:
        """Resume periodic schedule ``name``, without catching up the ticks it missed
        while paused: the next job is for the first tick after the resume."""
        self._run(conn, lambda c: periodic.resume(self.queries, c, name))

    def run_periodic_now(self, conn: ConnectionLike | None, name: str) -> datetime:
        """Ask the workers to enqueue one job of periodic schedule ``name`` now, through
        the task's ordinary enqueue, without changing its ticks; returns the request's
        time. The next worker that ticks the schedule (one serving its queue) enqueues it
        within about a second and records it in the ledger (``periodic_ticks``, reason
        ``manual``). Raises :class:`pgjobs.ScheduleNotFound`, or
        :class:`pgjobs.ScheduleDisabled` when no worker's code declares it."""
        return self._run(conn, lambda c: periodic.run_now(self.queries, c, name))

    # -- results ----------------------------------------------------------------------

    def result(self, conn: ConnectionLike | None, job_id: int) -> JobResult | None:
        """Job ``job_id``'s state, return value, errors, attempts, progress, checkpoint
        and times, read now (None: no such job, never enqueued or already pruned by
        retention). ``conn``: a connection or session to read on (None: the app's
        pool)."""
        results.check_wait(job_id, None)
        query = jobs.result(self.queries, job_id)
        psycopg_conn = sync_connection(conn)
        if psycopg_conn is not None:
            return query.run(psycopg_conn)
        with self.pool.connection() as own:
            return query.run(own)

    def wait(self, job_id: int, timeout: float | None = None) -> JobResult:
        """Block until job ``job_id`` reaches a terminal state (succeeded, dead,
        cancelled, expired) and return its :class:`JobResult`. Works from any process:
        woken by the notification its end sends (on :attr:`listen_dsn`), with a read
        every second as the fallback. Raises :class:`pgjobs.ResultTimeout` after
        ``timeout`` seconds (None: no limit) and :class:`pgjobs.JobNotFound` when there
        is no such job. ``Enqueued.wait(timeout)`` calls this."""
        results.check_wait(job_id, timeout)
        dsn = self.listen_dsn
        return results.wait(self.queries, dsn, None if dsn else self.pool, job_id, timeout,
                            self.config.done_channel)

    async def wait_async(self, job_id: int, timeout: float | None = None) -> JobResult:
        """:meth:`wait` for asyncio code."""
        results.check_wait(job_id, timeout)
        dsn = self.listen_dsn
        return await results.wait_async(self.queries, dsn, None if dsn else await self.apool(),
                                        job_id, timeout, self.config.done_channel)

    def _run(self, conn: ConnectionLike | None, action: Callable[[AnyConnection], T]) -> T:
        """``action`` on ``conn``, or (None) in a short transaction of the app's pool."""
        psycopg_conn = sync_connection(conn)
        if psycopg_conn is not None:
            return action(psycopg_conn)
        with self.pool.connection() as own, own.transaction():
            return action(own)

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


def _required(conn: ConnectionLike) -> AnyConnection:
    psycopg_conn = sync_connection(conn)
    if psycopg_conn is None:
        raise ConfigurationError(
            "a batch is built in your transaction: pass a connection, a SQLAlchemy session "
            "or Django's connection (inside transaction.atomic())"
        )
    return psycopg_conn
