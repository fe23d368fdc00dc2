"""Operator actions on jobs by id: cancel, retry and delete (``App.cancel_jobs``,
``App.retry_jobs``, ``pgjobs jobs cancel|retry`` and the dashboard).

Each action is one statement that changes what it may and reports, per id asked, what
happened and why not, so a batch of ids is never half understood.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg

from ..core.errors import InvalidOption
from ..core.types import JobChange
from ..db import batches, jobs
from ..db.queries import Queries

AnyConnection = psycopg.Connection[Any]


def job_ids(ids: Iterable[int]) -> list[int]:
    checked = sorted(set(ids))
    if not checked:
        raise InvalidOption("name at least one job id")
    for job_id in checked:
        if type(job_id) is not int or job_id < 1:
            raise InvalidOption(f"job ids are positive integers, not {job_id!r}")
    return checked


def cancel_jobs(q: Queries, conn: AnyConnection, ids: Iterable[int],
                reason: str | None) -> list[JobChange]:
    rows = jobs.cancel(q, job_ids(ids), reason).run(conn)
    _fold(q, conn, rows)
    return [_cancelled(**row) for row in rows]


def _fold(q: Queries, conn: AnyConnection, rows: list[dict[str, Any]]) -> None:
    """Fold the counters of the batches whose jobs changed, in this transaction, so the
    events they make due (a cancelled job counts as succeeded) fire with it. Their rows
    stay locked until it ends; a worker's fold skips them meanwhile."""
    changed = sorted({row["batch_id"] for row in rows
                      if row["changed"] and row["batch_id"] is not None})
    if changed:
        batches.fold(q, changed).run(conn)


def _cancelled(id: int, changed: bool, was: str | None, state: str | None,
               batch_id: int | None) -> JobChange:
    if changed:
        detail = ("cancelled; its worker stops the handler at its next heartbeat"
                  if was == "running" else "cancelled")
    elif state is None:
        detail = "no such job (never enqueued, or pruned after it finished)"
    else:
        detail = f"not cancelled: it has already finished ({state})"
    return JobChange(id, changed, was, state, detail)


def retry_jobs(q: Queries, conn: AnyConnection, ids: Iterable[int],
               channel: str) -> list[JobChange]:
    rows = jobs.retry(q, job_ids(ids), channel).run(conn)
    _fold(q, conn, rows)
    return [_retried(**row) for row in rows]


def _retried(id: int, changed: bool, was: str | None, state: str | None,
             key_holder: int | None, batch_succeeded: bool | None,
             batch_id: int | None) -> JobChange:
    if changed:
        detail = "runs now" if was == "available" else f"retried (was {was})"
    elif state is None:
        detail = "no such job (never enqueued, or pruned after it finished)"
    elif state in ("running", "succeeded") or (state == "available" and not key_holder):
        detail = f"not retried: it is {state}"
    elif batch_succeeded:
        detail = "not retried: its batch has succeeded and its callbacks have run"
    elif key_holder is not None:
        detail = f"not retried: job {key_holder} holds its unique key"
    else:
        detail = f"not retried: it is {state}"
    return JobChange(id, changed, was, state, detail)


def delete_jobs(q: Queries, conn: AnyConnection, ids: Iterable[int]) -> list[JobChange]:
    """Delete finished jobs (waiting and running ones must be cancelled first)."""
    return [_deleted(**row) for row in jobs.delete(q, job_ids(ids)).run(conn)]


def _deleted(id: int, changed: bool, was: str | None, state: str | None) -> JobChange:
    if changed:
        detail = f"deleted (was {was})"
    elif state is None:
        detail = "no such job (never enqueued, or already deleted)"
    else:
        detail = f"not deleted: it is {state}; cancel it first"
    return JobChange(id, changed, was, state, detail)
