"""What the web dashboard reads: queue overview, throughput, pages of jobs and batches,
one job, workers. Each returns a ``Query`` of records (dicts by column name); the
statements and why each stays fast at a million jobs are in ``db/sql/dashboard.py``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .queries import Queries
from .statement import Query, column, every, first, records, scalar

Records = Query[list[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Which jobs a list or a bulk action is about; None means any.

    ``args`` is a JSON object the job's args must contain (``args @> ...``); ``key`` a
    top-level key they must have."""

    state: str | None = None
    queue: str | None = None
    task: str | None = None
    batch: int | None = None
    args: dict[str, Any] | None = None
    key: str | None = None

    def params(self) -> dict[str, Any]:
        return {"state": self.state, "queue": self.queue, "task": self.task,
                "batch": self.batch, "key": self.key,
                "args": None if self.args is None else json.dumps(self.args)}


def queue_overview(q: Queries) -> Records:
    """Per queue: queue, paused, concurrency_limit, rate_limit, rate_period, available,
    scheduled, retrying, running, dead, oldest_wait."""
    return Query(q.queue_overview, None, every, records, schema=q.schema)


def throughput(q: Queries) -> Records:
    """Per queue and minute of the last hour: queue, minutes_ago (0-59), succeeded,
    failed (died or expired)."""
    return Query(q.job_throughput, None, every, records, schema=q.schema)


def job_page(q: Queries, where: JobFilter, *, before: int | None, limit: int,
             scan: int) -> Records:
    """Up to ``limit`` jobs matching ``where`` with ids below ``before``, newest first,
    found among at most ``scan`` candidate rows; each row also carries ``scanned_to``
    and ``scanned`` (where and how far the search went)."""
    params = {**where.params(), "before": before, "limit": limit, "scan": scan}
    return Query(q.job_page, params, every, records, schema=q.schema)


def count_matching(q: Queries, where: JobFilter, *, upto: int | None,
                   cap: int) -> Query[dict[str, Any]]:
    """How many jobs match (counting stops at ``cap``) and the newest one's id."""
    params = {**where.params(), "upto": upto, "cap": cap}
    return Query(q.job_count_matching, params, first, records, schema=q.schema)


def ids_matching(q: Queries, where: JobFilter, *, upto: int, limit: int) -> Query[list[int]]:
    """The ids of up to ``limit`` matching jobs at or below ``upto``, newest first."""
    params = {**where.params(), "upto": upto, "limit": limit}
    return Query(q.job_ids_matching, params, column, schema=q.schema)


def job_detail(q: Queries, job_id: int, args_max: int) -> Query[dict[str, Any] | None]:
    """One job, its worker and its batch; args as text cut at ``args_max`` characters
    (``args_size``: its full length in bytes)."""
    params = {"id": job_id, "args_max": args_max}
    return Query(q.job_detail, params, first, records, schema=q.schema)


def job_args(q: Queries, job_id: int) -> Query[str | None]:
    """One job's args as JSON text (None: no such job)."""
    return Query(q.job_args, {"id": job_id}, scalar, schema=q.schema)


def batch_page(q: Queries, *, parent: int | None, before: int | None, limit: int) -> Records:
    """Batches newest first (or the children of ``parent``), with callbacks and children."""
    params = {"parent": parent, "before": before, "limit": limit}
    return Query(q.batch_page, params, every, records, schema=q.schema)


def batch_lineage(q: Queries, batch_id: int) -> Records:
    """A batch (depth 0) and its parents, innermost first (empty: no such batch)."""
    return Query(q.batch_lineage, {"id": batch_id}, every, records, schema=q.schema)


def worker_page(q: Queries, jobs: int) -> Records:
    """Live workers (and those stopped in the last hour), each with ``running`` and the
    first ``jobs`` of the jobs it runs."""
    return Query(q.worker_page, {"jobs": jobs}, every, records, schema=q.schema)
