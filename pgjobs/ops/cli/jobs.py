"""``pgjobs jobs list|show|why|cancel|retry``: look at jobs and act on them by id.

Like the queue commands they need the database, not the application's code.
"""

from __future__ import annotations

import json
import sys

import click

from ...client import admin
from ...core.names import channel_for
from ...core.types import JobChange
from ...db import jobs as db_jobs
from ...db.queries import Queries
from .common import Target, connect, echo_json, queue_name, table, when

JSON_COLUMNS = ("args", "result", "progress", "checkpoint")
STATES = ("available", "running", "succeeded", "dead", "cancelled", "expired")


@click.group()
def jobs() -> None:
    """Look at jobs and act on them by id.

    \b
      pgjobs jobs list --state dead --queue mail
      pgjobs jobs show 42
      pgjobs jobs why 42
      pgjobs jobs retry 42 43
      pgjobs jobs cancel 44 --reason "customer left"
    """


@jobs.command("list")
@click.option("--queue", default=None, envvar="PGJOBS_JOBS_QUEUE", show_envvar=True,
              help="Only this queue.")
@click.option("--state", type=click.Choice(STATES), default=None, envvar="PGJOBS_JOBS_STATE",
              show_envvar=True, help="Only this state.")
@click.option("--task", default=None, envvar="PGJOBS_JOBS_TASK", show_envvar=True,
              help="Only this task name.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True,
              envvar="PGJOBS_JOBS_LIMIT", show_envvar=True, help="Most jobs shown.")
@click.option("--json", "as_json", is_flag=True, envvar="PGJOBS_JSON", show_envvar=True,
              help="JSON instead of a table.")
@click.pass_obj
def jobs_list(obj: Target, queue: str | None, state: str | None, task: str | None,
              limit: int, as_json: bool) -> None:
    """The latest jobs, newest first, with their last error."""
    query = db_jobs.latest(Queries(obj.schema), queue=None if queue is None else
                           queue_name(queue), state=state, task=task, limit=limit)
    with connect(obj) as conn:
        rows = query.run(conn)
    if as_json:
        echo_json(rows)
        return
    table(
        ["ID", "QUEUE", "TASK", "STATE", "ATTEMPT", "RUN AT", "FINISHED", "LAST ERROR"],
        [[str(r["id"]), r["queue"], r["task"], r["state"],
          f"{r['attempt']}/{r['max_attempts']}", when(r["run_at"]), when(r["finished_at"]),
          _last_error(r["last_error_type"], r["last_error"])] for r in rows],
    )


def _last_error(kind: str | None, message: str | None) -> str:
    if kind is None:
        return "-"
    text = f"{kind}: {message}" if message else kind
    text = " ".join(text.split())  # one line per job
    return text if len(text) <= 60 else text[:59] + "…"


@jobs.command("show")
@click.argument("job_id", type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, envvar="PGJOBS_JSON", show_envvar=True,
              help="JSON instead of text.")
@click.pass_obj
def jobs_show(obj: Target, job_id: int, as_json: bool) -> None:
    """Every column of job JOB_ID, with each failed attempt's traceback (progress and
    checkpoint: the last ones its handler reported)."""
    with connect(obj) as conn:
        row = db_jobs.get(Queries(obj.schema), job_id).run(conn)
    if row is None:
        raise click.ClickException(
            f"no job {job_id} (never enqueued, or pruned after it finished)")
    if as_json:
        echo_json(row)
        return
    errors = row.pop("errors") or []
    width = max(len(key) for key in row)
    for key, value in row.items():
        shown = json.dumps(value, ensure_ascii=False) if key in JSON_COLUMNS else value
        click.echo(f"{key.ljust(width)}  {'-' if value is None else shown}")
    for entry in errors:
        click.echo(f"\nattempt {entry.get('attempt')} at {entry.get('at')}: "
                   f"{entry.get('type')}: {entry.get('message')}")
        if entry.get("traceback"):
            click.echo(entry["traceback"].rstrip())


@jobs.command("why")
@click.argument("job_id", type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, envvar="PGJOBS_JSON", show_envvar=True,
              help="JSON rows of cause and reason instead of text.")
@click.pass_obj
def jobs_why(obj: Target, job_id: int, as_json: bool) -> None:
    """Why job JOB_ID is not running, or did not run, in plain words: one line per
    blocking fact (scheduled for later, queue paused, a concurrency or rate limit full
    with the jobs holding it, its unique hold locked, expired, dead with its last error,
    no live worker for its queue or task, the suspect throttle after a recovery), or
    what it is doing. The same rows as "SELECT * FROM pgjobs.why(JOB_ID)". Exits 1
    when there is no such job."""
    with connect(obj) as conn:
        rows = db_jobs.why(Queries(obj.schema), job_id).run(conn)
    if as_json:
        echo_json(rows)
    else:
        for row in rows:
            click.echo(f"job {job_id}: {row['reason']}")
    if [row["cause"] for row in rows] == ["missing"]:
        sys.exit(1)


def _report(changes: list[JobChange]) -> None:
    for change in changes:
        click.echo(f"job {change.id}: {change.detail}")
    if not all(change.changed for change in changes):
        sys.exit(1)


@jobs.command("cancel")
@click.argument("job_ids", nargs=-1, required=True, type=click.IntRange(min=1))
@click.option("--reason", default=None, envvar="PGJOBS_CANCEL_REASON", show_envvar=True,
              help="Kept in the job's meta as cancel_reason.")
@click.pass_obj
def jobs_cancel(obj: Target, job_ids: tuple[int, ...], reason: str | None) -> None:
    """Cancel waiting or running jobs. A running job's worker stops its handler at its
    next heartbeat (within a third of the lease), and the attempt's writes through pgjobs
    are refused. Exits 1 if a job could not be cancelled (it says why)."""
    with connect(obj) as conn, conn.transaction():
        _report(admin.cancel_jobs(Queries(obj.schema), conn, job_ids, reason))


@jobs.command("retry")
@click.argument("job_ids", nargs=-1, required=True, type=click.IntRange(min=1))
@click.pass_obj
def jobs_retry(obj: Target, job_ids: tuple[int, ...]) -> None:
    """Run dead, cancelled or expired jobs again now (and jobs waiting for a retry, at
    once). Their errors and attempt count are kept, with room for one more attempt.
    Exits 1 if a job could not be retried (it says why)."""
    with connect(obj) as conn, conn.transaction():
        _report(admin.retry_jobs(Queries(obj.schema), conn, job_ids, channel_for(obj.schema)))
