"""Claiming jobs: the two claim statements' runner, and the read that tells a worker which
of its queues have limits (``worker.routing`` picks the statement)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from psycopg import sql

from ..core.types import ClaimedJob
from .queries import Queries
from .statement import Query, column, every, named

CLAIMED = named(ClaimedJob)


def claim(q: Queries, statement: sql.SQL | sql.Composed, queues: Sequence[str], limit: int,
          lease: timedelta, worker_id: int | None) -> Query[list[ClaimedJob]]:
    """Up to ``limit`` jobs of ``queues``, leased for ``lease`` to ``worker_id``, with
    ``statement`` (``q.job_claim`` or ``q.job_claim_limited``)."""
    params = {"queues": list(queues), "limit": limit, "lease": lease, "worker_id": worker_id}
    return Query(statement, params, every, CLAIMED, schema=q.schema)


def limited_queues(q: Queries, queues: Sequence[str]) -> Query[list[str]]:
    """Which of ``queues`` have a concurrency or rate limit (and are not paused)."""
    return Query(q.queue_limited, {"queues": list(queues)}, column, schema=q.schema)
