"""Operator commands: ``pgjobs status``, ``pgjobs queue ...``, ``pgjobs periodic ...``
and ``pgjobs roles``.

They read pgjobs' tables (and PostgreSQL's statistics views) and write the ``queues`` and
``periodic`` tables only, so they need the database but not the application's code;
plain SQL on those tables does the same (docs/queues.md, docs/operations.md).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

import click
import psycopg
from psycopg import sql

from ._app import Config
from ._enqueue import check_queue, translated_errors
from ._errors import PgJobsError
from ._queries import Queries
from ._status import Status, Thresholds, collect, duration, next_tick

FC = TypeVar("FC", bound=Callable[..., Any])


class Target(Protocol):
    """What the ``pgjobs`` group passes down (``_cli.Context``)."""

    @property
    def dsn(self) -> str: ...

    schema: str


def _connect(obj: Target) -> psycopg.Connection[Any]:
    # One-off statements: never prepared, so a transaction-mode pooler is fine.
    return psycopg.connect(obj.dsn, autocommit=True, prepare_threshold=None)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    for line in (headers, *rows):
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


def _seconds(value: timedelta | None) -> str:
    if value is None:
        return "-"
    return f"{value.total_seconds():g}s"


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.isoformat(sep=" ", timespec="seconds")


def _queue_name(name: str) -> str:
    try:
        return check_queue(name)
    except PgJobsError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None


# -- pgjobs status -------------------------------------------------------------------------

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
              help="One JSON object (queues, workers, periodic, tables, horizon, warnings, "
                   "ok) instead of the screen.")
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
        with _connect(obj) as conn, translated_errors(obj.schema):
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
    click.echo(f"pgjobs status of schema {schema!r} at {_when(result.now)}\n")
    click.echo("QUEUES")
    _table(["QUEUE", "AVAILABLE", "SCHEDULED", "RETRYING", "RUNNING", "DEAD", "OLDEST WAIT",
            "PAUSED"],
           [[q["queue"], _count(q["available"]), _count(q["scheduled"]), _count(q["retrying"]),
             _count(q["running"]), _count(q["dead"]), duration(q["oldest_wait"]),
             "yes" if q["paused"] else "no"] for q in result.queues])
    click.echo("\nWORKERS")
    _table(["ID", "HOST", "PID", "STATE", "QUEUES", "RUNNING", "STARTED", "LAST HEARTBEAT"],
           [[str(w["id"]), w["host"], str(w["pid"]), w["state"] + (" (stale)" if w["stale"]
                                                                   else ""),
             ",".join(w["queues"]), f"{w['running']}/{w['concurrency']}",
             _when(w["started_at"]), f"{duration(w['silent'])} ago"]
            for w in result.workers])
    if result.periodic:
        click.echo("\nPERIODIC")
        _table(["NAME", "SCHEDULE", "TASK", "ENABLED", "LAST TICK", "NEXT TICK"],
               [[p["name"], p["schedule"], p["task"], "yes" if p["enabled"] else "no (paused)",
                 _when(p["last_tick"]), _when(p["next_tick"])] for p in result.periodic])
    click.echo("\nTABLES")
    _table(["TABLE", "LIVE ROWS", "DEAD ROWS", "LAST VACUUM"],
           [[t["table"], _count(t["live_tuples"]), _count(t["dead_tuples"]),
             "never" if t["last_vacuum"] is None else
             f"{duration(result.now - t['last_vacuum'])} ago"] for t in result.tables])
    click.echo("")
    if not result.warnings:
        click.echo("OK: no warnings")
    for warning in result.warnings:
        click.echo(f"WARNING [{warning.code}] {warning.message}")


# -- pgjobs queue --------------------------------------------------------------------------


@click.group()
def queue() -> None:
    """Pause, resume and limit queues at run time (the `queues` table).

    \b
      pgjobs queue pause mail
      pgjobs queue limit mail --concurrency 5 --rate 100 --per 60
      pgjobs queue list
    """


@queue.command("list")
@click.pass_obj
def queue_list(obj: Target) -> None:
    """Every queue with settings or waiting/running jobs."""
    queries = Queries(obj.schema)
    with _connect(obj) as conn, translated_errors(obj.schema):
        rows = conn.execute(queries.queue_list).fetchall()
    _table(
        ["QUEUE", "PAUSED", "CONCURRENCY", "RATE", "AVAILABLE", "RUNNING"],
        [[name, "yes" if paused else "no", "-" if limit is None else str(limit),
          "-" if rate is None else f"{rate} per {_seconds(period)}", str(available),
          str(running)]
         for name, paused, limit, rate, period, available, running in rows],
    )


def _set_paused(obj: Target, name: str, paused: bool) -> None:
    queries = Queries(obj.schema)
    params = {"name": _queue_name(name), "paused": paused,
              "channel": Config(schema=obj.schema).channel}
    with _connect(obj) as conn, translated_errors(obj.schema):
        conn.execute(queries.queue_set_paused, params)
    click.echo(f"queue {name!r} {'paused' if paused else 'resumed'}")


@queue.command("pause")
@click.argument("name")
@click.pass_obj
def queue_pause(obj: Target, name: str) -> None:
    """Stop claiming jobs of queue NAME (running jobs finish; new ones keep arriving)."""
    _set_paused(obj, name, True)


@queue.command("resume")
@click.argument("name")
@click.pass_obj
def queue_resume(obj: Target, name: str) -> None:
    """Claim jobs of queue NAME again (idle workers are woken at once)."""
    _set_paused(obj, name, False)


@queue.command("limit")
@click.argument("name")
@click.option("--concurrency", type=click.IntRange(min=0), default=None,
              envvar="PGJOBS_QUEUE_CONCURRENCY", show_envvar=True,
              help="Most running jobs of the queue across all workers (0: no limit).")
@click.option("--rate", type=click.IntRange(min=0), default=None,
              envvar="PGJOBS_QUEUE_RATE", show_envvar=True,
              help="Most jobs started per --per seconds across all workers (0: no limit).")
@click.option("--per", "per", type=click.FloatRange(min=0.001), default=None,
              envvar="PGJOBS_QUEUE_PER", show_envvar=True,
              help="The window of --rate, in seconds (a sliding window).")
@click.pass_obj
def queue_limit(obj: Target, name: str, concurrency: int | None, rate: int | None,
                per: float | None) -> None:
    """Set or remove queue NAME's concurrency and rate limits; options left out keep their
    current value."""
    if concurrency is None and rate is None:
        raise click.UsageError("give --concurrency N and/or --rate N --per SECONDS")
    if rate and per is None:
        raise click.UsageError("--rate N needs --per SECONDS (for example --rate 100 --per 60)")
    if per is not None and rate is None:
        raise click.UsageError("--per only applies with --rate")
    queries = Queries(obj.schema)
    params = {
        "name": _queue_name(name),
        "concurrency_limit": concurrency or None, "set_concurrency": concurrency is not None,
        "rate_limit": rate or None, "set_rate": rate is not None,
        "rate_period": timedelta(seconds=per) if rate and per else None,
        "channel": Config(schema=obj.schema).channel,
    }
    with _connect(obj) as conn, translated_errors(obj.schema):
        row = conn.execute(queries.queue_set_limits, params).fetchone()
    assert row is not None
    _, limit, rate_limit, period = row[:4]
    click.echo(
        f"queue {name!r}: concurrency {'unlimited' if limit is None else limit}, rate "
        f"{'unlimited' if rate_limit is None else f'{rate_limit} per {_seconds(period)}'}"
    )


# -- pgjobs periodic -----------------------------------------------------------------------


@click.group()
def periodic() -> None:
    """Periodic (cron) schedules: declared in code with @app.periodic, enqueued by workers."""


@periodic.command("list")
@click.pass_obj
def periodic_list(obj: Target) -> None:
    """Each schedule with its last tick, its next tick and whether it is enabled (a
    schedule removed from the code is disabled, not deleted)."""
    queries = Queries(obj.schema)
    with _connect(obj) as conn, translated_errors(obj.schema):
        rows = conn.execute(queries.periodic_list).fetchall()
    table = []
    for (name, task, queue_name, schedule, tz, catch_up, window, enabled, last_tick,
         last_job_id, now) in rows:
        upcoming = next_tick(schedule, tz, last_tick or now) if enabled else None
        nxt = _when(upcoming)
        if upcoming is not None and upcoming <= now:
            nxt += " (due)"
        policy = catch_up if window is None else f"{catch_up} ({_seconds(window)})"
        table.append([name, task, queue_name, schedule, tz, policy,
                      "yes" if enabled else "no", _when(last_tick), nxt,
                      "-" if last_job_id is None else str(last_job_id)])
    _table(["NAME", "TASK", "QUEUE", "SCHEDULE", "TZ", "CATCH-UP", "ENABLED", "LAST TICK",
            "NEXT TICK", "LAST JOB"], table)


# -- pgjobs roles --------------------------------------------------------------------------


def _role_option(kind: str, default: str, what: str) -> Callable[[FC], FC]:
    return click.option(f"--{kind}", default=default, show_default=True,
                        envvar=f"PGJOBS_{kind.upper()}_ROLE", show_envvar=True, help=what)


@click.command()
@click.option("--sql", "print_sql", is_flag=True, envvar="PGJOBS_ROLES_SQL", show_envvar=True,
              help="Print the SQL instead of applying it (for a DBA to review and run).")
@_role_option("owner", "pgjobs_owner", "Role that owns the schema; run `pgjobs migrate` as it.")
@_role_option("app", "pgjobs_app", "Role that enqueues jobs and reads their state.")
@_role_option("worker", "pgjobs_worker", "Role that runs `pgjobs worker`.")
@click.pass_obj
def roles(obj: Target, print_sql: bool, owner: str, app: str, worker: str) -> None:
    """Create the owner, app and worker roles and grant each what it needs (docs/security.md).

    Idempotent. Roles are created with LOGIN and no password when missing: set one with
    ALTER ROLE ... PASSWORD. Apply it as a superuser (or a role with CREATEROLE that owns
    the schema), then `pgjobs migrate` as the owner, then run it again: objects that did
    not exist yet get their grants. Run it again after every migrate.
    """
    from ._roles import Roles, roles_sql

    try:
        script = roles_sql(obj.schema, Roles(owner=owner, app=app, worker=worker))
    except PgJobsError as exc:
        raise click.UsageError(str(exc)) from None
    if print_sql:
        click.echo(script, nl=False)
        return
    with _connect(obj) as conn:
        try:
            conn.execute(script)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise click.ClickException(
                f"{exc.diag.message_primary}: run `pgjobs roles` as a superuser, or as a role "
                "with CREATEROLE that owns the schema's objects (or print the script with "
                "--sql for your DBA)"
            ) from exc
        migrated = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (
            sql.Identifier(obj.schema, "jobs").as_string(None),)).fetchone()
    click.echo(f"roles {owner}, {app} and {worker} are set up for schema {obj.schema!r}")
    if not migrated or not migrated[0]:
        click.echo(f"the schema has no tables yet: run `pgjobs migrate` as {owner}, then "
                   "`pgjobs roles` again to grant on them")
