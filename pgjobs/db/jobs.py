"""Jobs by id, for operators: read one (or its result), list the latest, cancel, retry,
delete."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..core.types import JobResult
from .queries import Queries
from .statement import Query, every, first, named, records, scalar


def get(q: Queries, job_id: int) -> Query[dict[str, Any] | None]:
    """Every column of one job (None: no such job)."""
    return Query(q.job_get, {"id": job_id}, first, records, schema=q.schema)


def result(q: Queries, job_id: int) -> Query[JobResult | None]:
    """One job's state and outcome (None: no such job)."""
    return Query(q.job_result, {"id": job_id}, first, named(JobResult), schema=q.schema)


def watch(q: Queries, job_id: int) -> Query[bool]:
    """Mark a job that has not ended as waited for, so that its end notifies the done
    channel; False when it has ended, does not exist, or is locked right now."""
    return Query(q.job_watch, {"id": job_id}, scalar, schema=q.schema)


def why(q: Queries, job_id: int) -> Query[list[dict[str, Any]]]:
    """Why the job is not running or did not run: rows of cause and reason."""
    return Query(q.job_why, {"id": job_id}, every, records, schema=q.schema)


def latest(q: Queries, *, queue: str | None = None, state: str | None = None,
           task: str | None = None, limit: int = 50) -> Query[list[dict[str, Any]]]:
    """The latest jobs, newest first, filtered by what is given, with their last error."""
    params = {"queue": queue, "state": state, "task": task, "limit": limit}
    return Query(q.job_list, params, every, records, schema=q.schema)


def cancel(q: Queries, ids: Sequence[int], reason: str | None
           ) -> Query[list[dict[str, Any]]]:
    """Cancel waiting and running jobs; per id asked: id, changed, was, state."""
    return Query(q.job_cancel, {"ids": list(ids), "reason": reason}, every, records,
                 schema=q.schema)


def retry(q: Queries, ids: Sequence[int], channel: str) -> Query[list[dict[str, Any]]]:
    """Run dead, cancelled and expired jobs again; per id asked: id, changed, was, state,
    key_holder, batch_succeeded."""
    return Query(q.job_retry, {"ids": list(ids), "channel": channel}, every, records,
                 schema=q.schema)


def delete(q: Queries, ids: Sequence[int]) -> Query[list[dict[str, Any]]]:
    """Delete finished jobs; per id asked: id, changed, was, state (None: gone)."""
    return Query(q.job_delete, {"ids": list(ids)}, every, records, schema=q.schema)
