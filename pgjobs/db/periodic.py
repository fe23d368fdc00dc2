"""Periodic schedules: register the code's schedules, read their state, claim a tick by
compare-and-set, record the jobs a tick enqueued."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ..core.schedule import Schedule
from .queries import Queries
from .statement import Query, column, every, first, records, rowcount


def upsert(q: Queries, schedules: Sequence[Schedule]) -> Query[int]:
    """Insert or update the rows of ``schedules`` (in name order)."""
    ordered = sorted(schedules, key=lambda s: s.name)
    params = {
        "names": [s.name for s in ordered],
        "schedules": [s.cron for s in ordered],
        "tasks": [s.task.name for s in ordered],
        "queues": [s.task.opts.queue for s in ordered],
        "args": [s.args_json for s in ordered],
        "timezones": [s.tz for s in ordered],
        "catch_ups": [s.catch_up for s in ordered],
        "windows": [s.catch_up_window for s in ordered],
    }
    return Query(q.periodic_upsert, params, rowcount, schema=q.schema)


def disable_missing(q: Queries, names: Sequence[str]) -> Query[list[str]]:
    """Disable the enabled schedules not in ``names``; their names."""
    return Query(q.periodic_disable_missing, {"names": list(names)}, column, schema=q.schema)


def state(q: Queries, names: Sequence[str]
          ) -> Query[list[tuple[str, datetime, datetime | None, datetime]]]:
    """(name, base, last_tick, now) of each enabled schedule in ``names``."""
    return Query(q.periodic_state, {"names": list(names)}, every, schema=q.schema)


def advance(q: Queries, name: str, new: datetime, old: datetime | None) -> Query[bool]:
    """Move ``last_tick`` from ``old`` to ``new``; False when another worker did first."""
    return Query(q.periodic_advance, {"name": name, "new": new, "old": old}, _won,
                 schema=q.schema)


def record(q: Queries, name: str, ids: Sequence[int], ticks: Sequence[str],
           last_job_id: int | None) -> Query[int]:
    """Stamp the tick's jobs with their schedule and tick, and remember the last one."""
    params = {"name": name, "ids": list(ids), "ticks": list(ticks), "last_job_id": last_job_id}
    return Query(q.periodic_record, params, rowcount, schema=q.schema)


def list_all(q: Queries) -> Query[list[dict[str, Any]]]:
    """Every schedule's row (name, task, queue, schedule, timezone, catch_up,
    catch_up_window, enabled, last_tick, last_job_id, now)."""
    return Query(q.periodic_list, None, every, records, schema=q.schema)


def _won(rows: list[Any], count: int) -> bool:
    return first(rows, count) is not None
