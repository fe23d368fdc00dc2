"""Plain values that cross layers: what an enqueue returns, a job's result, what an
operator action did, a batch's counters, and the columns a claim hands to the worker."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from .errors import ConfigurationError

TERMINAL_STATES = frozenset({"succeeded", "dead", "cancelled", "expired"})
"""The states a job ends in (absorbing, except for an operator's retry)."""


@dataclass(frozen=True, slots=True)
class JobResult:
    """A job's state and outcome at one moment (``App.result``, ``Enqueued.wait``)."""

    id: int
    task: str
    queue: str
    state: str
    """available, running, succeeded, dead, cancelled or expired."""
    result: Any
    """The handler's return value, as JSON decoded (None until it succeeded)."""
    errors: list[dict[str, Any]]
    """One entry per failed attempt or lost worker: attempt, at, type, message,
    traceback."""
    attempt: int
    max_attempts: int
    recoveries: int
    progress: Any
    """The last progress the handler reported (a fraction or a JSON object), or None."""
    checkpoint: Any
    """The last checkpoint the handler stored (any JSON), or None."""
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def finished(self) -> bool:
        """True in a terminal state: succeeded, dead, cancelled or expired."""
        return self.state in TERMINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.state == "succeeded"

    @property
    def last_error(self) -> dict[str, Any] | None:
        return self.errors[-1] if self.errors else None


class ResultSource(Protocol):
    """What ``Enqueued.wait`` needs: an App (client layer) that can wait for a job."""

    def wait(self, job_id: int, timeout: float | None = None) -> JobResult: ...

    async def wait_async(self, job_id: int, timeout: float | None = None) -> JobResult: ...


@dataclass(frozen=True, slots=True)
class Enqueued:
    """What an enqueue returns."""

    id: int
    """The job's id in ``jobs``."""
    duplicate: bool = False
    """True when a unique key was already held: ``id`` is the holder's id."""
    source: ResultSource | None = field(default=None, repr=False, compare=False, hash=False)
    """The App that enqueued it (for :meth:`wait`); set by the enqueue call. Not pickled:
    an Enqueued sent to another process waits there with ``app.wait(id)``."""

    def __reduce__(self) -> tuple[type[Enqueued], tuple[int, bool]]:
        return (Enqueued, (self.id, self.duplicate))

    def __copy__(self) -> Enqueued:
        return self  # immutable

    def __deepcopy__(self, memo: dict[int, Any]) -> Enqueued:
        return self

    def wait(self, timeout: float | None = None) -> JobResult:
        """Block until the job reaches a terminal state (succeeded, dead, cancelled,
        expired) and return its :class:`JobResult`; ``timeout`` seconds at most (None:
        no limit), then :class:`pgjobs.ResultTimeout`. Woken by the notification sent when
        the job ends, polling as a fallback; works from any process. Commit the enqueue's
        transaction first: an uncommitted job is invisible to the waiting connection."""
        return self._source().wait(self.id, timeout)

    async def wait_async(self, timeout: float | None = None) -> JobResult:
        """:meth:`wait` for asyncio code (an ``AsyncConnection`` of its own)."""
        return await self._source().wait_async(self.id, timeout)

    def _source(self) -> ResultSource:
        if self.source is None:
            raise ConfigurationError(
                f"job {self.id} was not enqueued through an App here; use "
                f"app.wait({self.id}, timeout) instead")
        return self.source


@dataclass(frozen=True, slots=True)
class JobChange:
    """What an operator action did to one job."""

    id: int
    changed: bool
    was: str | None
    """The job's state before (None: no such job, or pruned)."""
    state: str | None
    """Its state now."""
    detail: str
    """In words: what happened, or why nothing did."""


@dataclass(frozen=True, slots=True)
class BatchStatus:
    """A batch's counters at one moment (``batch_progress`` in SQL)."""

    id: int
    parent_id: int | None
    description: str | None
    state: str
    """pending, complete (every job ran at least once) or succeeded."""
    total: int
    pending: int
    """Jobs not yet succeeded (cancelled counts as succeeded)."""
    succeeded: int
    failed: int
    """Pending jobs that have failed at least once (dead ones included)."""
    dead: int
    """Jobs that are dead or expired."""
    children_pending: int
    children_incomplete: int
    created_at: datetime
    completed_at: datetime | None
    succeeded_at: datetime | None
    died_at: datetime | None

    @property
    def complete(self) -> bool:
        return self.completed_at is not None

    @property
    def succeeded_all(self) -> bool:
        return self.succeeded_at is not None


@dataclass(slots=True)
class ClaimedJob:
    """The columns a claim returns: only what execution needs (decoded by column name)."""

    id: int
    task: str
    queue: str
    args: dict[str, Any]  # an Undecodable when the claim could not decode them
    attempt: int
    max_attempts: int
    lease_token: Any
    """The attempt's lease (a UUID, as text: the worker only hands it back)."""
    recoveries: int
    batch_id: int | None
    meta: dict[str, Any]
    unique_hold: bool = False
    """The job has a unique key (its completion may release a hold)."""
    checkpoint: Any = None
    """The last checkpoint an earlier attempt stored (``current_job().last_checkpoint``)."""


@dataclass(frozen=True, slots=True)
class SweptJob:
    """A job a maintenance step changed (reclaimed from a lost worker, or expired)."""

    id: int
    task: str
    queue: str
    attempt: int
    state: str
    """Its state now: ``available`` or ``dead`` after a reclaim, ``expired``."""
    meta: dict[str, Any]
