"""What a handler sees of its job: ``current_job()``, and the control-flow exceptions."""

from __future__ import annotations

import contextvars
import json
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from . import _failpoints
from ._db import atuples, tuples
from ._errors import LeaseLost, PgJobsError

if TYPE_CHECKING:
    import psycopg

    from ._queries import Queries


def _seconds(value: timedelta | float | int | None) -> float:
    if value is None:
        return 0.0
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 0:
        raise ValueError("a delay cannot be negative")
    return seconds


class Retry(Exception):
    """Raise in a handler to retry later; the attempt counts toward ``max_attempts``."""

    def __init__(self, in_: timedelta | float | None = None, reason: str = "") -> None:
        super().__init__(reason or "retry requested")
        # None: the task's backoff decides; 0 retries at once.
        self.delay: float | None = None if in_ is None else _seconds(in_)
        self.reason = reason


class Snooze(Exception):
    """Raise in a handler to run again after ``in_`` without counting an attempt."""

    def __init__(self, in_: timedelta | float, reason: str = "") -> None:
        super().__init__(reason or "snoozed")
        self.delay = _seconds(in_)
        self.reason = reason


class Cancel(Exception):
    """Raise in a handler to end the job as ``cancelled`` (no retry)."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason or "cancelled")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Undecodable:
    """Stands for a JSON value a worker could not decode (nested too deep for Python,
    a number too long for ``int()``): that job fails, the others in its claim run."""

    error: str


def lenient_json_loads(data: str | bytes) -> Any:
    """``json.loads`` for the worker's claim connection, where one bad row must not
    abort the claim (and the worker) for every job claimed with it."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        return Undecodable(f"{type(exc).__name__}: {exc}"[:500])


@dataclass(slots=True)
class ClaimedJob:
    """The columns a claim returns: only what execution needs."""

    id: int
    task: str
    queue: str
    args: dict[str, Any]  # an Undecodable when the claim could not decode them
    attempt: int
    max_attempts: int
    lease_token: Any
    recoveries: int
    batch_id: int | None
    meta: dict[str, Any]


def row_dict(cursor: Any, row: tuple[Any, ...]) -> dict[str, Any]:
    return {column.name: value for column, value in zip(cursor.description, row, strict=True)}


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
    completed: bool = False
    """True once ``complete(conn)`` succeeded (it commits with the caller's transaction)."""
    shutting_down: bool = False
    """True once the worker received SIGTERM: the job still has ``--shutdown-timeout`` to
    finish. A long handler may checkpoint and ``raise pgjobs.Snooze(0)`` to be released
    at once without spending an attempt."""

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
    def lease_lost(self) -> bool:
        """True when this attempt lost its lease: another attempt may own the job now.
        A sync handler should stop its side effects; its outcome will be dropped."""
        return self.lease_lost_event.is_set()

    @property
    def should_stop(self) -> bool:
        """True when the handler must stop now: its lease was lost, its timeout passed, or
        the shutdown grace period ran out (see also :attr:`shutting_down`)."""
        return self.stop_event.is_set()

    def complete(self, conn: psycopg.Connection[Any], result: Any = None) -> None:
        """Mark the job succeeded inside ``conn``'s transaction, fenced by the lease.

        Write your effects and call this in one transaction to get them exactly once:
        if this attempt no longer holds the lease, :class:`pgjobs.LeaseLost` is raised
        and your transaction must roll back (a ``with conn:`` block does that).
        """
        _failpoints.hit("mid_handler")
        cursor = tuples(conn).execute(self.queries.job_complete_fenced, self._params(result))
        self._check(cursor.fetchone())

    async def complete_async(self, aconn: psycopg.AsyncConnection[Any], result: Any = None) -> None:
        """:meth:`complete` on an ``AsyncConnection``."""
        _failpoints.hit("mid_handler")
        statement = self.queries.job_complete_fenced
        cursor = await atuples(aconn).execute(statement, self._params(result))
        self._check(await cursor.fetchone())

    def _params(self, result: Any) -> dict[str, Any]:
        from ._executor import encode_result

        return {"id": self.job.id, "token": self.job.lease_token, "result": encode_result(result)}

    def _check(self, row: object) -> None:
        if row is None:
            self.lease_lost_event.set()
            self.stop_event.set()
            raise LeaseLost(
                f"job {self.job.id} attempt {self.job.attempt} no longer holds its lease; "
                "roll back this transaction (another attempt owns the job)"
            )
        self.completed = True


_current: contextvars.ContextVar[JobContext] = contextvars.ContextVar("pgjobs_current_job")


def current_job() -> JobContext:
    """The job being run by the calling handler (also in threads of sync handlers)."""
    try:
        return _current.get()
    except LookupError:
        raise PgJobsError("current_job() is only available inside a running job handler") from None
