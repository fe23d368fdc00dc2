"""``pgjobs periodic ...``: the schedules, their ledger (what each tick became), and
run-time control (pause, resume, run now). They need the database but not the
application's code; plain SQL does the same (docs/periodic.md)."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import click

from ...client import periodic as client_periodic
from ...core.errors import ScheduleNotFound
from ...core.schedule import next_tick
from ...db import periodic as db_periodic
from ...db.queries import Queries
from .common import Target, connect, seconds, table, when


@click.group()
def periodic() -> None:
    """Periodic (cron) schedules: declared in code with @app.periodic, enqueued by workers.

    \b
      pgjobs periodic list
      pgjobs periodic show nightly_report --ticks 50
      pgjobs periodic pause nightly_report
      pgjobs periodic resume nightly_report
      pgjobs periodic run-now nightly_report
    """


@periodic.command("list")
@click.pass_obj
def periodic_list(obj: Target) -> None:
    """Each schedule with its last tick, its next tick, whether it is enabled (a schedule
    removed from the code is disabled, not deleted) or paused, and its owner."""
    with connect(obj) as conn:
        rows = db_periodic.list_all(Queries(obj.schema)).run(conn)
    table(["NAME", "TASK", "QUEUE", "SCHEDULE", "TZ", "CATCH-UP", "ENABLED", "LAST TICK",
           "NEXT TICK", "LAST JOB", "PAUSED", "OWNER"],
          [[*_summary(r), "yes" if r["paused"] else "no", r["owner"]] for r in rows])


@periodic.command("show")
@click.argument("name")
@click.option("--ticks", "limit", type=click.IntRange(min=1, max=10_000), default=20,
              show_default=True, envvar="PGJOBS_PERIODIC_TICKS", show_envvar=True,
              help="How many of the newest ledger rows to print.")
@click.pass_obj
def periodic_show(obj: Target, name: str, limit: int) -> None:
    """Schedule NAME and its newest ticks from the ledger (periodic_ticks): enqueued (with
    the job), skipped (paused, catch_up, duplicate) or missed (outside_window)."""
    queries = Queries(obj.schema)
    with connect(obj) as conn:
        rows = db_periodic.list_all(queries, name).run(conn)
        ticks = db_periodic.recent_ticks(queries, name, limit).run(conn)
    if not rows:
        raise ScheduleNotFound(name)
    r = rows[0]
    summary = dict(zip(["name", "task", "queue", "schedule", "timezone", "catch-up",
                        "enabled", "last tick", "next tick", "last job"], _summary(r),
                       strict=True))
    summary |= {"paused": "yes" if r["paused"] else "no", "owner": r["owner"],
                "resumed at": when(r["resumed_at"]),
                "run requested": when(r["run_requested_at"]), "created": when(r["created_at"])}
    for key, value in summary.items():
        click.echo(f"{key + ':':<15} {value}")
    click.echo("")
    table(["TICK", "OUTCOME", "REASON", "JOB", "RECORDED"],
          [[_ticks(t["first_tick"], t["tick"]), t["outcome"], t["reason"],
            "-" if t["job_id"] is None else str(t["job_id"]), when(t["recorded_at"])]
           for t in ticks])


@periodic.command("pause")
@click.argument("name")
@click.pass_obj
def periodic_pause(obj: Target, name: str) -> None:
    """Stop enqueueing schedule NAME's ticks: they are recorded as skipped (reason paused).
    It stays paused across worker restarts and deploys, until resumed."""
    with connect(obj) as conn:
        client_periodic.pause(Queries(obj.schema), conn, name)
    click.echo(f"periodic schedule {name!r} paused")


@periodic.command("resume")
@click.argument("name")
@click.pass_obj
def periodic_resume(obj: Target, name: str) -> None:
    """Enqueue schedule NAME's ticks again, from the next one on: the ticks due while it
    was paused are not caught up."""
    with connect(obj) as conn:
        client_periodic.resume(Queries(obj.schema), conn, name)
    click.echo(f"periodic schedule {name!r} resumed")


@periodic.command("run-now")
@click.argument("name")
@click.option("--wait", "wait", type=click.FloatRange(min=0), default=10.0,
              show_default=True, envvar="PGJOBS_PERIODIC_WAIT", show_envvar=True,
              help="Seconds to wait for a worker to enqueue the job and print its id "
                   "(0: request and return).")
@click.pass_obj
def periodic_run_now(obj: Target, name: str, wait: float) -> None:
    """Enqueue one job of schedule NAME now, as its tick would (paused or not), without
    changing its ticks. A worker serving its queue enqueues it within about a second (only
    workers have the task's code) and records it in the ledger (reason manual); exits 1 if
    none did within --wait seconds, leaving the request for the next worker."""
    queries = Queries(obj.schema)
    with connect(obj) as conn:
        requested = client_periodic.run_now(queries, conn, name)
        click.echo(f"run of {name!r} requested at {when(requested)}")
        if wait == 0:
            return
        row = _wait_for_run(queries, conn, name, requested, wait)
    if row is None:
        raise click.ClickException(
            f"no worker enqueued it within {wait:g}s; the request stays pending until a "
            f"worker that ticks {name!r} (one serving its queue) takes it")
    if row["outcome"] == "enqueued":
        click.echo(f"enqueued as job {row['job_id']}")
    else:
        click.echo(f"not enqueued: job {row['job_id']} holds the task's unique key")


def _wait_for_run(queries: Queries, conn: Any, name: str, requested: datetime,
                  wait: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + wait
    while True:
        row = client_periodic.manual_run(queries, conn, name, requested)
        if row is not None or time.monotonic() >= deadline:
            return row
        time.sleep(0.2)


def _summary(r: dict[str, Any]) -> list[str]:
    """A schedule's row as list prints it, up to LAST JOB."""
    now, window = r["now"], r["catch_up_window"]
    upcoming = (next_tick(r["schedule"], r["timezone"], r["last_tick"] or now)
                if r["enabled"] else None)
    nxt = when(upcoming)
    if upcoming is not None and upcoming <= now:
        nxt += " (due)"
    policy = r["catch_up"] if window is None else f"{r['catch_up']} ({seconds(window)})"
    return [r["name"], r["task"], r["queue"], r["schedule"], r["timezone"], policy,
            "yes" if r["enabled"] else "no", when(r["last_tick"]), nxt,
            "-" if r["last_job_id"] is None else str(r["last_job_id"])]


def _ticks(first: datetime, last: datetime) -> str:
    return when(last) if first == last else f"{when(first)} .. {when(last)}"
