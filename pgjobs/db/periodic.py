"""Periodic schedules: register the code's schedules, read their state, claim a tick by
compare-and-set, record what each tick became (the ledger, ``periodic_ticks``), pause,
resume and request a run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..core.schedule import Schedule
from .queries import Queries
from .statement import Query, column, every, first, records, rowcount, scalar


@dataclass(frozen=True, slots=True)
class TickEntry:
    """One ledger row: a tick (or a run of ticks, ``first_tick`` to ``tick``), what it
    became and why, and its job (enqueued: the new job; a duplicate: the job holding the
    unique key)."""

    tick: datetime
    first_tick: datetime
    outcome: str
    reason: str
    job_id: int | None = None


def upsert(q: Queries, schedules: Sequence[Schedule], owner: str) -> Query[int]:
    """Insert or update the rows of ``schedules`` (in name order), owned by ``owner``."""
    ordered = sorted(schedules, key=lambda s: s.name)
    params = {
        "owner": owner,
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


def disable_missing(q: Queries, names: Sequence[str], owner: str) -> Query[list[str]]:
    """Disable ``owner``'s enabled schedules not in ``names``; their names."""
    return Query(q.periodic_disable_missing, {"names": list(names), "owner": owner}, column,
                 schema=q.schema)


def state(q: Queries, names: Sequence[str]) -> Query[list[dict[str, Any]]]:
    """Each enabled schedule in ``names``: name, base (where ticks start), last_tick, now,
    paused, resumed_at, run_requested_at."""
    return Query(q.periodic_state, {"names": list(names)}, every, records, schema=q.schema)


def advance(q: Queries, name: str, new: datetime, old: datetime | None, paused: bool,
            resumed_at: datetime | None) -> Query[bool]:
    """Move ``last_tick`` from ``old`` to ``new`` if the schedule is still as read (paused,
    resumed_at); False when another worker did first, or an operator changed it."""
    params = {"name": name, "new": new, "old": old, "paused": paused, "resumed_at": resumed_at}
    return Query(q.periodic_advance, params, _won, schema=q.schema)


def record(q: Queries, name: str, entries: Sequence[TickEntry], last_job_id: int | None
           ) -> Query[int]:
    """Write the ledger rows of ``entries`` (in order), stamp their enqueued jobs with the
    schedule and tick, and remember the last tick's job (None: keep the one before)."""
    params = {
        "name": name,
        "ticks": [e.tick for e in entries],
        "first_ticks": [e.first_tick for e in entries],
        "outcomes": [e.outcome for e in entries],
        "reasons": [e.reason for e in entries],
        "job_ids": [e.job_id for e in entries],
        "stamps": [e.tick.isoformat() for e in entries],
        "last_job_id": last_job_id,
    }
    return Query(q.periodic_tick_record, params, rowcount, schema=q.schema)


def set_paused(q: Queries, name: str, paused: bool) -> Query[dict[str, Any] | None]:
    """Pause or resume schedule ``name``: its name, enabled and paused (None: no such
    schedule)."""
    return Query(q.periodic_set_paused, {"name": name, "paused": paused}, first, records,
                 schema=q.schema)


def request_run(q: Queries, name: str) -> Query[dict[str, Any] | None]:
    """Ask the workers for one run of ``name`` now: name, enabled and the pending
    request's time (None when disabled); None: no such schedule."""
    return Query(q.periodic_request_run, {"name": name}, first, records, schema=q.schema)


def take_run(q: Queries, name: str) -> Query[datetime | None]:
    """Take ``name``'s pending run request: when it was made (None: none, or another
    worker took it)."""
    return Query(q.periodic_take_run, {"name": name}, scalar, schema=q.schema)


def manual_tick(q: Queries, name: str, requested_at: datetime
                ) -> Query[dict[str, Any] | None]:
    """The ledger row of ``name``'s run requested at ``requested_at`` (None: not run yet)."""
    return Query(q.periodic_tick_manual, {"name": name, "tick": requested_at}, first, records,
                 schema=q.schema)


def recent_ticks(q: Queries, name: str, limit: int) -> Query[list[dict[str, Any]]]:
    """The newest ``limit`` ledger rows of ``name``, newest first."""
    return Query(q.periodic_tick_recent, {"name": name, "limit": limit}, every, records,
                 schema=q.schema)


def latest_ticks(q: Queries, limit: int) -> Query[list[dict[str, Any]]]:
    """The newest ``limit`` ledger rows of every schedule, by name, newest first."""
    return Query(q.periodic_tick_latest, {"limit": limit}, every, records, schema=q.schema)


def list_all(q: Queries, name: str | None = None) -> Query[list[dict[str, Any]]]:
    """Every schedule's row, or ``name``'s (name, task, queue, schedule, timezone,
    catch_up, catch_up_window, enabled, last_tick, last_job_id, owner, paused,
    resumed_at, run_requested_at, created_at, now)."""
    return Query(q.periodic_list, {"name": name}, every, records, schema=q.schema)


def _won(rows: list[Any], count: int) -> bool:
    return first(rows, count) is not None
