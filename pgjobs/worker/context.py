"""What a handler sees of its job: ``current_job()``, a ``JobContext``."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg

from ..core import failpoints
from ..core.args import encode_checkpoint, encode_progress, encode_result
from ..core.errors import LeaseLost, PgJobsError
from ..core.types import ClaimedJob
from ..db import leases
from ..db.queries import Queries
from ..db.sessions import async_connection, sync_connection
from ..db.statement import Query, translated_errors
from .txpool import TransactionPools

if TYPE_CHECKING:
    from ..db.sessions import AsyncConnectionLike, ConnectionLike


T = TypeVar("T")


class Flag:
    """A one-way flag: set by the worker's event loop, read by handler threads.

    Only ``set`` and ``is_set`` are needed (nothing waits on it), and a bool is read and
    written atomically, so this replaces two ``threading.Event`` per job, whose Condition
    and Lock were a tenth of the worker's CPU per no-op job in a drain profile."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


@dataclass(eq=False)
class JobContext:
    """The running job, from ``pgjobs.current_job()`` inside a handler."""

    job: ClaimedJob
    queries: Queries = field(repr=False)
    lease_lost_event: Flag = field(default_factory=Flag, repr=False)
    stop_event: Flag = field(default_factory=Flag, repr=False)
    pools: TransactionPools | None = field(default=None, repr=False)
    """Where :meth:`transaction` borrows its connection (None: outside a worker)."""
    completed: bool = False
    """True once ``complete(conn)`` succeeded (it commits with the caller's transaction)."""
    committed: bool = False
    """True once :meth:`transaction` committed the job's success with its effects."""
    shutting_down: bool = False
    """True once the worker received SIGTERM: the job still has ``--shutdown-timeout`` to
    finish. A long handler may checkpoint and ``raise pgjobs.Snooze(0)`` to be released
    at once without spending an attempt."""
    # What the handler reported, as (JSON text, version), and the versions written: set
    # from the handler's thread, read by the heartbeat on the loop (tuples replace whole).
    _progress: tuple[str | None, int] = field(default=(None, 0), repr=False)
    _checkpoint: tuple[str | None, int] = field(default=(None, 0), repr=False)
    _written: tuple[int, int] = field(default=(0, 0), repr=False)

    @property
    def id(self) -> int:
        return self.job.id

    @property
    def task(self) -> str:
        return self.job.task

    @property
    def queue(self) -> str:
        return self.job.queue

    @property
    def args(self) -> dict[str, Any]:
        return self.job.args

    @property
    def attempt(self) -> int:
        """1 for the first attempt; recoveries after a lost worker do not count."""
        return self.job.attempt

    @property
    def max_attempts(self) -> int:
        return self.job.max_attempts

    @property
    def recoveries(self) -> int:
        return self.job.recoveries

    @property
    def meta(self) -> Mapping[str, Any]:
        """The job's ``meta`` when it was claimed, read-only: pgjobs' own keys (``batch``,
        ``periodic``, ``snoozed``, ``trace``, ...) and what enqueue middleware stored
        (``EnqueueCall.meta``)."""
        return MappingProxyType(self.job.meta)

    @property
    def batch_id(self) -> int | None:
        """The batch this job belongs to, or (for a callback) the batch that fired it."""
        if self.job.batch_id is not None:
            return self.job.batch_id
        batch = self.job.meta.get("batch")
        return int(batch["id"]) if isinstance(batch, dict) else None

    @property
    def batch(self) -> dict[str, Any] | None:
        """In a batch callback: the batch's id, event and counters when it fired."""
        batch = self.job.meta.get("batch")
        return batch if isinstance(batch, dict) else None

    @property
    def last_checkpoint(self) -> Any:
        """The checkpoint an earlier attempt of this job stored (None: none), so that a
        retried or recovered job can resume where it stopped."""
        return self.job.checkpoint

    def progress(self, value: float | Mapping[str, Any]) -> None:
        """Report progress: a fraction from 0 to 1, or a small JSON object (at most 4 KB)
        such as ``{"done": 40, "total": 100}``. Kept in memory and written to
        ``jobs.progress`` with the next lease heartbeat (every lease/3) and at the job's
        end: a call costs no round trip. Bad values raise :class:`pgjobs.InvalidArgs`."""
        self._progress = (encode_progress(value), self._progress[1] + 1)

    def checkpoint(self, value: Any) -> None:
        """Store any JSON value (at most 1 MB) as this job's checkpoint: written to
        ``jobs.checkpoint`` like :meth:`progress`, and handed to a later attempt (a retry,
        or a recovery after a lost worker) as :attr:`last_checkpoint`."""
        self._checkpoint = (encode_checkpoint(value), self._checkpoint[1] + 1)

    def reported(self, progress: str | None, checkpoint: str | None) -> None:
        """Reports already encoded (JSON texts; None: nothing new), as a suspect's own
        process sends them to its worker (``worker.isolated``)."""
        if progress is not None:
            self._progress = (progress, self._progress[1] + 1)
        if checkpoint is not None:
            self._checkpoint = (checkpoint, self._checkpoint[1] + 1)

    def unwritten(self) -> tuple[tuple[str | None, str | None], tuple[int, int]]:
        """The reports no write has carried yet ((progress, checkpoint), None: nothing
        new), and the versions to pass to :meth:`written` once a write carried them."""
        (progress, p_version), (checkpoint, c_version) = self._progress, self._checkpoint
        p_written, c_written = self._written
        return ((progress if p_version > p_written else None,
                 checkpoint if c_version > c_written else None), (p_version, c_version))

    def written(self, versions: tuple[int, int]) -> None:
        self._written = versions

    @property
    def lease_lost(self) -> bool:
        """True when this attempt lost its lease: another attempt may own the job now.
        A sync handler should stop its side effects; its outcome will be dropped."""
        return self.lease_lost_event.is_set()

    @property
    def should_stop(self) -> bool:
        """True when the handler must stop now: its lease was lost, its timeout passed, or
        the shutdown grace period ran out (see also :attr:`shutting_down`)."""
        return self.stop_event.is_set()

    def complete(self, conn: ConnectionLike, result: Any = None) -> None:
        """Mark the job succeeded inside ``conn``'s transaction, fenced by the lease.

        Write your effects and call this in one transaction to get them exactly once:
        if this attempt no longer holds the lease, :class:`pgjobs.LeaseLost` is raised
        and your transaction must roll back (a ``with conn:`` block does that).
        ``conn`` may also be a SQLAlchemy ``Session`` or ``Connection`` (the
        session's transaction) or Django's connection inside ``transaction.atomic()``.
        """
        failpoints.hit("mid_handler")
        self._check(self._completion(result).run(_given(sync_connection(conn))))

    async def complete_async(self, aconn: AsyncConnectionLike, result: Any = None) -> None:
        """:meth:`complete` on a psycopg ``AsyncConnection`` or a SQLAlchemy
        ``AsyncSession`` / ``AsyncConnection``."""
        failpoints.hit("mid_handler")
        self._check(await self._completion(result).arun(_given(await async_connection(aconn))))

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection in a transaction that commits with the job's success: exactly-once
        effects, with two round trips after your statements (the completion, then the
        COMMIT)::

            with pgjobs.current_job().transaction() as conn:
                conn.execute("INSERT INTO deliveries ...", (...))
            # committed: the delivery and the job's success, together

        The connection is the worker's own (one per handler thread; a pool of
        ``--concurrency`` for async handlers), so the handler needs no pool of its own.
        If this attempt has lost its lease (reclaimed, or cancelled), the block's effects
        roll back and :class:`pgjobs.LeaseLost` is raised; an exception in the block
        rolls back too and fails the attempt as usual. The job's result is None (use
        :meth:`complete` in your own transaction to store one)."""
        conn = self._pools().connection()
        try:
            yield conn
            failpoints.hit("mid_handler")
            query = leases.complete_commit(self.queries, self.id, self.job.lease_token, None)
            report = self._report()
            # Not pipelined: psycopg's pipeline mode cost more client CPU than the round
            # trip it saves (benchmarks/tx_completion.py), and the client's CPU is what
            # bounds a worker of transactional jobs.
            with translated_errors(self.queries.schema):
                if report is not None:
                    conn.execute(report.text, report.params)
                conn.execute(query.text, query.params)
                conn.commit()
            self._committed()
        except BaseException as exc:
            self._rolled_back(conn, exc)
            raise

    @asynccontextmanager
    async def transaction_async(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """:meth:`transaction` for async handlers: an ``AsyncConnection``."""
        pool = await self._pools().asynchronous()
        conn = await pool.getconn()
        try:
            yield conn
            failpoints.hit("mid_handler")
            query = leases.complete_commit(self.queries, self.id, self.job.lease_token, None)
            report = self._report()
            with translated_errors(self.queries.schema):  # not pipelined: see transaction()
                if report is not None:
                    await conn.execute(report.text, report.params)
                await conn.execute(query.text, query.params)
                await conn.commit()
            self._committed()
        except BaseException as exc:
            if not conn.closed:
                with contextlib.suppress(psycopg.Error):
                    await conn.rollback()
            self._lost(exc)
            raise
        finally:
            await pool.putconn(conn)

    def _pools(self) -> TransactionPools:
        if self.pools is None:
            raise PgJobsError("current_job().transaction() needs a running worker's "
                              "connections; use complete(conn) on a connection of yours")
        return self.pools

    def _committed(self) -> None:
        self.completed = self.committed = True

    def _rolled_back(self, conn: psycopg.Connection[Any], exc: BaseException) -> None:
        if not conn.closed:
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
        self._lost(exc)

    def _lost(self, exc: BaseException) -> None:
        if isinstance(exc, LeaseLost):
            self.lease_lost_event.set()
            self.stop_event.set()

    def _report(self) -> Query[None] | None:
        """The write of unwritten reports before a success in the handler's transaction."""
        reports, _ = self.unwritten()
        if reports == leases.NOTHING_NEW:
            return None
        return leases.report(self.queries, self.id, self.job.lease_token, reports)

    def _completion(self, result: Any) -> Query[bool]:
        job = self.job
        reports, _ = self.unwritten()
        return leases.complete_fenced(self.queries, job.id, job.lease_token,
                                      encode_result(result), reports)

    def _check(self, written: bool) -> None:
        if not written:
            self.lease_lost_event.set()
            self.stop_event.set()
            raise LeaseLost(
                f"job {self.job.id} attempt {self.job.attempt} no longer holds its lease; "
                "roll back this transaction (another attempt owns the job)"
            )
        self.completed = True


def _given(conn: T | None) -> T:
    if conn is None:
        raise PgJobsError("complete() runs in your transaction: pass its connection or session")
    return conn


_current: contextvars.ContextVar[JobContext] = contextvars.ContextVar("pgjobs_current_job")


def current_job() -> JobContext:
    """The job being run by the calling handler (also in threads of sync handlers)."""
    try:
        return _current.get()
    except LookupError:
        raise PgJobsError("current_job() is only available inside a running job handler") from None
