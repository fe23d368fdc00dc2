"""What ``pgjobs status`` shows: queues, workers, schedules, table health, and the warnings
an operator should act on. Plain data from plain queries (``collect``) and plain rules
(``warnings``), so a dashboard or a monitoring probe can reuse them without the CLI."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg

from ..core.schedule import next_tick
from ..db import periodic
from ..db import status as reads
from ..db.queries import Queries


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When ``pgjobs status`` warns (each has a flag and a ``PGJOBS_STATUS_*`` twin)."""

    max_wait: float = 300.0
    """Seconds the oldest due job of a running queue may wait."""
    max_xact_age: float = 300.0
    """Seconds a transaction (or snapshot) may stay open in this database."""
    max_dead_tuples: int = 100_000
    """Dead row versions a pgjobs table may hold (and more than a fifth of its live rows)."""
    periodic_grace: float = 120.0
    """Seconds an enabled schedule's tick may be overdue."""


@dataclass(frozen=True, slots=True)
class StatusWarning:
    code: str
    """A stable name for machines: queue_paused, queue_waiting, queue_unserved,
    worker_stale, periodic_overdue, unknown_task, xmin_horizon, dead_tuples."""
    message: str
    """One line that says what is wrong and what to do."""


@dataclass
class Status:
    now: datetime
    queues: list[dict[str, Any]]
    workers: list[dict[str, Any]]
    periodic: list[dict[str, Any]]
    tables: list[dict[str, Any]]
    horizon: list[dict[str, Any]]
    unknown_tasks: list[dict[str, Any]] = field(default_factory=list)
    """Per queue and task, jobs whose latest attempt failed as no worker had the task
    registered: retrying (waiting for their next attempt) and dead."""
    warnings: list[StatusWarning] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """Plain JSON values: times as ISO 8601, durations as seconds."""
        plain: dict[str, Any] = _plain({**asdict(self), "ok": not self.warnings})
        return plain


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def collect(conn: psycopg.Connection[Any], queries: Queries,
            thresholds: Thresholds = Thresholds()) -> Status:
    """Read everything ``pgjobs status`` shows, in one snapshot-free pass of short
    statements (autocommit), and derive its warnings."""
    now: datetime = reads.now(queries).run(conn)
    queues = reads.queues(queries).run(conn)
    workers = reads.workers(queries).run(conn)
    for worker in workers:
        worker["stale"] = worker["state"] != "stopped" and worker["silent"] > worker["lease"]
    schedules = periodic.list_all(queries).run(conn)
    for schedule in schedules:
        del schedule["now"]
        schedule["next_tick"] = next_tick(
            schedule["schedule"], schedule["timezone"], schedule["last_tick"] or now
        ) if schedule["enabled"] else None
    tables = reads.tables(queries).run(conn)
    horizon = reads.horizon(queries).run(conn)
    unknown = reads.unknown_tasks(queries).run(conn)
    found = Status(now, queues, workers, schedules, tables, horizon, unknown)
    found.warnings = warnings(found, queries.schema, thresholds)
    return found


def warnings(status: Status, schema: str, limits: Thresholds) -> list[StatusWarning]:
    """The rules, each a line an operator can act on."""
    found = [*_queue_warnings(status, limits), *_worker_warnings(status),
             *_periodic_warnings(status, limits), *_unknown_task_warnings(status)]
    holders = [h for h in status.horizon if _holds_horizon(h, limits)]
    found += [StatusWarning("xmin_horizon", _holder_message(h)) for h in holders]
    for table in status.tables:
        dead, live = table["dead_tuples"], table["live_tuples"]
        if dead >= limits.max_dead_tuples and dead > live / 5:
            cause = (
                f"vacuum cannot remove them while {_holder_name(holders[0])} holds the xmin "
                "horizon (see its warning)" if holders else
                "vacuum has not kept up: check that autovacuum runs (SHOW autovacuum; "
                f"pg_stat_progress_vacuum) or run VACUUM {schema}.{table['table']}")
            found.append(StatusWarning("dead_tuples", (
                f"{schema}.{table['table']} holds {dead:,} dead row versions ({live:,} live; "
                f"last vacuum {_ago(table['last_vacuum'], status.now)}): {cause}")))
    return found


def _queue_warnings(status: Status, limits: Thresholds) -> list[StatusWarning]:
    claiming = [w for w in status.workers if w["state"] == "running" and not w["stale"]]
    found = []
    for q in status.queues:
        name, due, wait = q["queue"], q["available"], q["oldest_wait"]
        if q["paused"] and due:
            found.append(StatusWarning("queue_paused", (
                f"queue {name!r} is paused with {due:,} due jobs: "
                f"`pgjobs queue resume {name}` when it should run again")))
        elif due and not any(name in w["queues"] for w in claiming):
            found.append(StatusWarning("queue_unserved", (
                f"queue {name!r} has {due:,} due jobs and no live worker claims from it: "
                f"start one (pgjobs worker --app ... --queues {name})")))
        elif wait is not None and wait.total_seconds() > limits.max_wait:
            found.append(StatusWarning("queue_waiting", (
                f"queue {name!r}: its oldest due job has waited {duration(wait)} (limit "
                f"{duration(limits.max_wait)}) with {due:,} due and {q['running']:,} "
                "running: add workers or --concurrency, or check its limits "
                "(pgjobs queue list)")))
    return found


def _worker_warnings(status: Status) -> list[StatusWarning]:
    return [StatusWarning("worker_stale", (
        f"worker {w['id']} ({w['host']} pid {w['pid']}, {w['state']}) has sent no heartbeat "
        f"for {duration(w['silent'])} (lease {duration(w['lease'])}): its "
        f"{w['running']} running job(s) return to their queue as their lease expires; if "
        "the process hangs, kill it (its row is pruned after --retention-workers)"))
        for w in status.workers if w["stale"]]


def _periodic_warnings(status: Status, limits: Thresholds) -> list[StatusWarning]:
    found = []
    for p in status.periodic:
        tick = p["next_tick"]
        if tick is not None and (status.now - tick).total_seconds() > limits.periodic_grace:
            found.append(StatusWarning("periodic_overdue", (
                f"schedule {p['name']!r} ({p['schedule']}) has a tick due since "
                f"{duration(status.now - tick)}: no worker of the app that declares it "
                "serves its queue (a worker ticks the schedules of the queues it claims "
                "from: start one with --queues including that queue)")))
    return found


def _unknown_task_warnings(status: Status) -> list[StatusWarning]:
    return [StatusWarning("unknown_task", (
        f"{u['waiting'] + u['dead']:,} job(s) of task {u['task']!r} in queue {u['queue']!r} "
        "have a task no live worker knows "
        f"({u['waiting']:,} waiting for one, {u['dead']:,} dead; a worker last knew it: "
        f"{_ago(u['last_seen_at'], status.now)}): "
        "deploy workers that register it (waiting jobs die after the workers' "
        "--unknown-task-grace), or, if the name is a producer's typo, cancel them "
        "(pgjobs jobs cancel) and fix the producer"))
        for u in status.unknown_tasks]


def _holds_horizon(holder: dict[str, Any], limits: Thresholds) -> bool:
    if holder["kind"] == "replication slot":
        return bool(holder["state"] == "inactive")
    age = holder["age"]
    return age is not None and age.total_seconds() > limits.max_xact_age


def _holder_name(holder: dict[str, Any]) -> str:
    if holder["kind"] == "backend":
        return f"backend pid {holder['name']}"
    return f"{holder['kind']} {holder['name']!r}"


def _holder_message(holder: dict[str, Any]) -> str:
    kind, name = holder["kind"], holder["name"]
    if kind == "backend":
        what = (f"backend pid {name} (application_name {holder['application_name']!r}, user "
                f"{holder['user']!r}, state {holder['state']!r}) has held a transaction or "
                f"snapshot open for {duration(holder['age'])}")
        fix = (f"end it: commit or close that session, or SELECT pg_terminate_backend({name})")
    elif kind == "prepared transaction":
        what = (f"prepared transaction {name!r} (owner {holder['user']!r}) has been "
                f"waiting for {duration(holder['age'])}")
        fix = f"COMMIT PREPARED '{name}' or ROLLBACK PREPARED '{name}'"
    else:
        what = f"replication slot {name!r} is inactive and keeps an xmin"
        fix = f"reconnect its consumer, or SELECT pg_drop_replication_slot('{name}')"
    return (f"{what}: vacuum cannot remove row versions deleted since it began, in pgjobs' "
            f"tables or any other (xmin age {holder['xmin_age'] or '-'} transactions); {fix}")


def _ago(when: datetime | None, now: datetime) -> str:
    return "never" if when is None else f"{duration(now - when)} ago"


def duration(value: timedelta | float | None) -> str:
    """12s, 5m03s, 2h05m, 3d04h."""
    if value is None:
        return "-"
    seconds = int(value.total_seconds() if isinstance(value, timedelta) else value)
    if seconds < 60:
        return f"{max(seconds, 0)}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"
