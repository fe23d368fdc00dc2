"""What ``pgjobs status`` reads: per-queue counts, workers, table health, the xmin
horizon's holders, and the database's clock (one short statement each, autocommit); and
what ``pgjobs exporter`` reads: the queue-wide gauges, in one statement."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .queries import Queries
from .statement import Query, every, named, records, scalar

Records = Query[list[dict[str, Any]]]


def now(q: Queries) -> Query[datetime]:
    return Query(q.status_now, None, scalar, schema=q.schema)


def queues(q: Queries) -> Records:
    """Per queue: queue, paused, available, scheduled, retrying, running, dead,
    oldest_wait."""
    return Query(q.status_queues, None, every, records, schema=q.schema)


def unknown_tasks(q: Queries) -> Records:
    """Per queue and task that no live worker knows: queue, task, waiting (available),
    dead (with UnknownTask as their last error), last_seen_at (when a worker last knew
    the task; None: never)."""
    return Query(q.status_unknown_tasks, None, every, records, schema=q.schema)


def workers(q: Queries) -> Records:
    """Workers not stopped (and stopped in the last hour): id, host, pid, state, queues,
    concurrency, started_at, heartbeat_at, silent, lease, running."""
    return Query(q.status_workers, None, every, records, schema=q.schema)


def tables(q: Queries) -> Records:
    """pgjobs' tables: table, live_tuples, dead_tuples, last_vacuum, vacuum_count."""
    return Query(q.status_tables, {"schema": q.schema}, every, records, schema=q.schema)


def horizon(q: Queries) -> Records:
    """What holds back vacuum's horizon: kind, name, application_name, state, user, age,
    xmin_age, query."""
    return Query(q.status_horizon, None, every, records, schema=q.schema)


@dataclass(frozen=True, slots=True)
class GaugeRow:
    """One value of one gauge (``db.sql.status.status_gauges`` says which)."""

    metric: str
    queue: str | None
    state: str | None
    value: float


def gauges(q: Queries) -> Query[list[GaugeRow]]:
    return Query(q.status_gauges, None, every, named(GaugeRow), schema=q.schema)
