"""``pgjobs status``: queues, workers, schedules and table health on one screen, then the
warnings an operator should act on (``ops.status`` reads and judges; this prints)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
import psycopg

from ...core.errors import PgJobsError
from ...db.queries import Queries
from ...db.statement import translated_errors
from ..status import Status, Thresholds, collect, duration
from .common import Target, connect, table, when

FC = TypeVar("FC", bound=Callable[..., Any])


UNKNOWN = 3
"""Exit status when the status cannot be read (Nagios' UNKNOWN)."""


class StatusUnknown(click.ClickException):
    exit_code = UNKNOWN


def _threshold(name: str, kind: click.ParamType[Any], default: float,
               what: str) -> Callable[[FC], FC]:
    envvar = "PGJOBS_STATUS_" + name.removeprefix("--").replace("-", "_").upper()
    return click.option(name, type=kind, default=default, show_default=True, envvar=envvar,
                        show_envvar=True, help=what)


@click.command()
@click.option("--json", "as_json", is_flag=True, envvar="PGJOBS_STATUS_JSON", show_envvar=True,
              help="One JSON object (queues, workers, periodic, tables, horizon, "
                   "unknown_tasks, warnings, ok) instead of the screen.")
@_threshold("--max-wait", click.FloatRange(min=0), 300.0,
            "Warn when a queue's oldest due job has waited longer (seconds).")
@_threshold("--max-xact-age", click.FloatRange(min=0), 300.0,
            "Warn when a transaction or snapshot in this database is open longer (seconds).")
@_threshold("--max-dead-tuples", click.IntRange(min=0), 100_000,
            "Warn when a pgjobs table holds more dead row versions (and over a fifth of "
            "its live rows).")
@click.pass_obj
def status(obj: Target, as_json: bool, max_wait: float, max_xact_age: float,
           max_dead_tuples: int) -> None:
    """Queues, workers, schedules and table health on one screen, then warnings.

    \b
    Exit status (as a Nagios/Icinga check): 0 no warning, 1 at least one
    warning, 3 the status could not be read (no database, schema not migrated).
    """
    thresholds = Thresholds(max_wait=max_wait, max_xact_age=max_xact_age,
                            max_dead_tuples=max_dead_tuples)
    try:
        with connect(obj) as conn, translated_errors(obj.schema):
            result = collect(conn, Queries(obj.schema), thresholds)
    except PgJobsError as exc:
        raise StatusUnknown(str(exc)) from exc
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise StatusUnknown(f"cannot reach the database: {first}") from exc
    if as_json:
        click.echo(json.dumps(result.as_json(), indent=2))
    else:
        _show(result, obj.schema)
    sys.exit(1 if result.warnings else 0)


def _count(n: int) -> str:
    return f"{n:,}"


def _show(result: Status, schema: str) -> None:
    click.echo(f"pgjobs status of schema {schema!r} at {when(result.now)}\n")
    click.echo("QUEUES")
    table(["QUEUE", "AVAILABLE", "SCHEDULED", "RETRYING", "RUNNING", "DEAD", "OLDEST WAIT",
            "PAUSED"],
           [[q["queue"], _count(q["available"]), _count(q["scheduled"]), _count(q["retrying"]),
             _count(q["running"]), _count(q["dead"]), duration(q["oldest_wait"]),
             "yes" if q["paused"] else "no"] for q in result.queues])
    click.echo("\nWORKERS")
    table(["ID", "HOST", "PID", "STATE", "QUEUES", "RUNNING", "STARTED", "LAST HEARTBEAT"],
           [[str(w["id"]), w["host"], str(w["pid"]), w["state"] + (" (stale)" if w["stale"]
                                                                   else ""),
             ",".join(w["queues"]), f"{w['running']}/{w['concurrency']}",
             when(w["started_at"]), f"{duration(w['silent'])} ago"]
            for w in result.workers])
    if result.periodic:
        click.echo("\nPERIODIC")
        table(["NAME", "SCHEDULE", "TASK", "ENABLED", "LAST TICK", "NEXT TICK"],
               [[p["name"], p["schedule"], p["task"], _enabled(p), when(p["last_tick"]),
                 when(p["next_tick"])] for p in result.periodic])
    if result.unknown_tasks:
        click.echo("\nUNKNOWN TASKS (jobs of tasks no live worker knows)")
        table(["QUEUE", "TASK", "WAITING", "DEAD", "LAST KNOWN"],
              [[u["queue"], u["task"], _count(u["waiting"]), _count(u["dead"]),
                when(u["last_seen_at"])] for u in result.unknown_tasks])
    click.echo("\nTABLES")
    table(["TABLE", "LIVE ROWS", "DEAD ROWS", "LAST VACUUM"],
           [[t["table"], _count(t["live_tuples"]), _count(t["dead_tuples"]),
             "never" if t["last_vacuum"] is None else
             f"{duration(result.now - t['last_vacuum'])} ago"] for t in result.tables])
    click.echo("")
    if not result.warnings:
        click.echo("OK: no warnings")
    for warning in result.warnings:
        click.echo(f"WARNING [{warning.code}] {warning.message}")


def _enabled(schedule: dict[str, Any]) -> str:
    if not schedule["enabled"]:
        return "no (gone from the code)"
    return "yes (paused)" if schedule["paused"] else "yes"
