"""Plain values that cross layers: what an enqueue returns, what an operator action did,
a batch's counters, and the columns a claim hands to the worker."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Enqueued:
    """What an enqueue returns."""

    id: int
    """The job's id in ``jobs``."""
    duplicate: bool = False
    """True when a unique key was already held: ``id`` is the holder's id."""


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
