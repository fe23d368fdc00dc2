"""A running job's lease, from claim to end: renew it (heartbeat), end it with an outcome
(the completer's batched, fenced write, or a fenced completion inside the handler's own
transaction), or take it back from a lost worker (reclaim) or an expired job (expire).

``outcome_row`` is the one place where an attempt's outcome becomes the values written to
``jobs``; ``complete_many`` writes a flush of them in one statement.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from ..core.outcomes import (
    CANCELLED,
    CRASHED,
    DEAD,
    LEASE_LOST,
    RELEASED,
    RETRY,
    SNOOZED,
    SUCCEEDED,
    UNKNOWN_TASK,
    Outcome,
)
from ..core.types import SweptJob
from .queries import Queries
from .statement import Query, Rows, every, first, named

# (state, delay seconds, attempt refund, error, result JSON text, meta, recoveries added)
Row = tuple[str, float | None, int, dict[str, Any] | None, str | None, dict[str, Any] | None,
            int]
# What a handler reported and no heartbeat has written yet: (progress, checkpoint) as JSON
# text, None for each that has not changed.
Reports = tuple[str | None, str | None]
NOTHING_NEW: Reports = (None, None)


def outcome_row(outcome: Outcome) -> Row | None:
    """The values ``job_complete_many`` writes for ``outcome`` (None: write nothing)."""
    kind = outcome.kind
    error, meta, delay = outcome.error, outcome.meta, outcome.delay
    if kind == SUCCEEDED:
        return ("succeeded", delay, 0, None, outcome.result, None, 0)
    if kind == RETRY:
        return ("available", delay, 0, error, None, None, 0)
    if kind == DEAD:
        return ("dead", delay, 0, error, None, None, 0)
    if kind == SNOOZED:
        return ("available", delay, 1, None, None, meta, 0)
    if kind == CANCELLED:
        return ("cancelled", delay, 0, None, None, meta, 0)
    if kind == RELEASED:  # no delay: it keeps its run_at, its place in line
        return ("available", None, 1, None, None, None, 0)
    if kind == CRASHED:  # a recovery: refunded, counted apart, in its place in line
        return ("dead" if outcome.dead else "available", None, 1, error, None, None, 1)
    if kind == UNKNOWN_TASK:  # available, or dead past the grace: the statement decides
        return ("unknown_task", delay, 1, None, None, None, 0)
    if kind == LEASE_LOST:
        return None
    raise AssertionError(f"unknown outcome {kind!r}")


def complete_many(q: Queries, writes: Sequence[tuple[int, Any, Row]],
                  reports: Sequence[Reports] | None = None,
                  unknown_task_grace: float | None = None) -> Query[set[int]]:
    """Write (job id, lease token, row) triples in one statement, with each job's last
    unwritten ``reports`` when given (in the same order); returns the ids written (a job
    whose lease this attempt lost is not among them). ``unknown_task_grace``: seconds
    after which an ``unknown_task`` row is dead rather than available (None: never)."""
    return Query(q.job_complete_many, outcomes_param(writes, reports, unknown_task_grace),
                 _ids, schema=q.schema)


PLAIN_SUCCESS: Row = ("succeeded", None, 0, None, None, None, 0)


def plain_success(row: Row) -> bool:
    """A success with nothing to store but the state (no result, error or meta); its
    delay, if any, is ignored by every statement for a finished job."""
    return row[0] == "succeeded" and row[2:] == PLAIN_SUCCESS[2:]


def complete_succeeded(q: Queries, jobs: Sequence[tuple[int, Any]]) -> Query[set[int]]:
    """Plain successes of (job id, lease token) pairs, for jobs that hold no unique key,
    in one statement (``job_complete_succeeded``); returns the ids written. Run it alone
    in its transaction (autocommit, as the completer does): it counts its batches itself
    and keeps the batch trigger out until its transaction ends."""
    param = ",".join(f"{job_id}:{token}" for job_id, token in jobs)
    return Query(q.job_complete_succeeded, {"jobs": param}, _ids, schema=q.schema)


def outcomes_param(writes: Sequence[tuple[int, Any, Row]],
                   reports: Sequence[Reports] | None = None,
                   unknown_task_grace: float | None = None) -> dict[str, Any]:
    """``job_complete_many``'s parameters: the outcomes, a JSON array of [id, token, kind,
    delay, refund, error, result, meta, recovered, progress, checkpoint] rows (one text
    parameter is far cheaper to send than eleven arrays dumped element by element), and
    the grace of its ``unknown_task`` rows (seconds; None: never dead)."""
    if reports is None:
        document = [[job_id, str(token), *row] for job_id, token, row in writes]
    else:
        document = [[job_id, str(token), *row, *report]
                    for (job_id, token, row), report in zip(writes, reports, strict=True)]
    # ensure_ascii: a lone surrogate or NUL becomes a JSON escape that the database
    # refuses (a psycopg.Error, which the completer handles row by row), never an encoding
    # error in the driver.
    grace = None if unknown_task_grace is None else timedelta(seconds=unknown_task_grace)
    return {"outcomes": json.dumps(document, separators=(",", ":")),
            "unknown_task_grace": grace}


def complete_fenced(q: Queries, job_id: int, token: Any, result: str | None,
                    reports: Reports = NOTHING_NEW) -> Query[bool]:
    """Success inside the caller's transaction, if this attempt still holds the lease
    (with the handler's last unwritten reports)."""
    params = {"id": job_id, "token": token, "result": result, "progress": reports[0],
              "checkpoint": reports[1]}
    return Query(q.job_complete_fenced, params, _found, schema=q.schema)


def report(q: Queries, job_id: int, token: Any, reports: Reports) -> Query[None]:
    """Write a handler's unwritten reports, fenced by the lease (in its transaction)."""
    params = {"id": job_id, "token": token, "progress": reports[0], "checkpoint": reports[1]}
    return Query(q.job_report, params, _nothing, schema=q.schema)


def complete_commit(q: Queries, job_id: int, token: Any, result: str | None) -> Query[None]:
    """Success inside the caller's transaction, raising :class:`pgjobs.LeaseLost` (PJ002)
    when this attempt no longer holds the lease, which aborts the transaction."""
    params = {"id": job_id, "token": token, "result": result}
    return Query(q.job_complete_commit, params, _nothing, schema=q.schema)


def heartbeat(q: Queries, ids: Sequence[int], tokens: Sequence[Any], lease: timedelta,
              worker_id: int | None, reports: Sequence[Reports] | None = None
              ) -> Query[dict[Any, bool]]:
    """Renew the leases of (id, token) pairs and the worker's heartbeat, writing each
    job's unwritten ``reports`` (same order; None: nothing new anywhere); returns the
    tokens still held, each with True when renewed (its reports written) or False when
    busy in its handler's own transaction."""
    progress = [r[0] for r in reports] if reports else [None] * len(ids)
    checkpoints = [r[1] for r in reports] if reports else progress
    params = {"ids": list(ids), "tokens": list(tokens), "lease": lease, "worker_id": worker_id,
              "progress": progress, "checkpoints": checkpoints}
    return Query(q.job_heartbeat, params, _tokens, schema=q.schema)


def reclaim(q: Queries, budget: int, channel: str, limit: int = 1000
            ) -> Query[list[SweptJob]]:
    """Take back running jobs whose lease expired (each with its new state)."""
    params = {"limit": limit, "budget": budget, "channel": channel}
    return Query(q.job_reclaim, params, every, named(SweptJob), schema=q.schema)


def expire(q: Queries, limit: int = 1000) -> Query[list[SweptJob]]:
    """Mark available jobs past their ``expires_at`` expired."""
    return Query(q.job_expire, {"limit": limit}, every, named(SweptJob), schema=q.schema)


def _nothing(rows: Rows, count: int) -> None:
    return None


def _ids(rows: Rows, count: int) -> set[int]:
    return {row[0] for row in rows}


def _found(rows: Rows, count: int) -> bool:
    return first(rows, count) is not None


def _tokens(rows: Rows, count: int) -> dict[Any, bool]:
    return {row[0]: row[1] for row in rows}
