"""Retention: bounded deletes of what pgjobs no longer needs (see ``db.sql.retention``)."""

from __future__ import annotations

from datetime import timedelta

from .queries import Queries
from .statement import Query, column, every, rowcount


def jobs(q: Queries, periods: dict[str, timedelta | None], limit: int, lock: int
         ) -> Query[list[str]]:
    """Finished jobs past their state's retention (``periods`` by state: succeeded,
    cancelled, dead, expired; None keeps that state forever); the state of each deleted."""
    return Query(q.job_prune, {**periods, "limit": limit, "lock": lock}, column,
                 schema=q.schema)


def batches(q: Queries, keep: timedelta, limit: int, lock: int) -> Query[int]:
    """Batches complete for ``keep`` with no job and no child left."""
    return Query(q.batch_prune, {"keep": keep, "limit": limit, "lock": lock}, rowcount,
                 schema=q.schema)


def workers(q: Queries, keep: timedelta, limit: int
            ) -> Query[list[tuple[int, str, int, str]]]:
    """Rows of workers silent for ``keep``: (id, host, pid, state) of each deleted."""
    return Query(q.worker_prune, {"keep": keep, "limit": limit}, every, schema=q.schema)


def periodic_ticks(q: Queries, keep: timedelta, limit: int, lock: int) -> Query[int]:
    """Periodic ledger rows recorded more than ``keep`` ago."""
    return Query(q.periodic_tick_prune, {"keep": keep, "limit": limit, "lock": lock}, rowcount,
                 schema=q.schema)


def unique_keys(q: Queries, limit: int) -> Query[int]:
    """Unique holds whose time ran out."""
    return Query(q.unique_key_prune, {"limit": limit}, rowcount, schema=q.schema)


def receipts(q: Queries, limit: int) -> Query[int]:
    """Reliable-push receipts past their retry window (a day)."""
    return Query(q.enqueue_receipt_prune, {"limit": limit}, rowcount, schema=q.schema)


def limit_keys(q: Queries, limit: int) -> Query[int]:
    """Concurrency keys nobody used for an hour (or their rate period, if longer)."""
    return Query(q.limit_key_prune, {"limit": limit}, rowcount, schema=q.schema)
