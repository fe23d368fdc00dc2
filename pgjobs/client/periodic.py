"""Periodic declarations and run-time control: ``@app.periodic`` validates a schedule for
a registered task; :func:`pause`, :func:`resume` and :func:`run_now` (``App.pause_periodic``
and friends, ``pgjobs periodic pause|resume|run-now``, the dashboard) act on its row.

The controls need the database only, not the code that declares the schedule: a run
requested here is enqueued by the next worker that ticks the schedule, since only a worker
has the task's code (its options, unique key and limits)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from croniter import croniter
from croniter.croniter import CroniterError

from ..core.errors import ConfigurationError, InvalidOption, ScheduleDisabled, ScheduleNotFound
from ..core.schedule import CATCH_UP_POLICIES, Schedule
from ..db import periodic
from ..db.queries import Queries
from .task import Task

AnyConnection = psycopg.Connection[Any]


def make_schedule(
    task: Task[..., Any], cron: str, *, name: str | None = None,
    kwargs: Mapping[str, Any] | None = None, tz: str = "UTC", catch_up: str = "latest",
    catch_up_window: timedelta | None = None,
) -> Schedule:
    """Validate a schedule for ``task`` (raising a typed error for bad input)."""
    if not isinstance(task, Task) or task.fn is None:
        raise ConfigurationError(
            "a periodic schedule needs a registered task: put @app.periodic(...) above "
            "@app.job, or pass the task @app.job returned to app.schedule(task, cron)"
        )
    if not isinstance(cron, str) or not croniter.is_valid(cron):
        raise InvalidOption(
            f"{task.name}: {cron!r} is not a cron expression; use five fields "
            "('*/5 * * * *': every 5 minutes) or six, the sixth being seconds "
            "('* * * * * */10': every 10 seconds)"
        )
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidOption(
            f"{task.name}: unknown time zone {tz!r}; use an IANA name such as "
            "'UTC' or 'Europe/Berlin'"
        ) from None
    if catch_up not in CATCH_UP_POLICIES:
        raise InvalidOption(
            f"{task.name}: catch_up must be one of {', '.join(CATCH_UP_POLICIES)}, "
            f"not {catch_up!r}"
        )
    if catch_up_window is not None:
        if not isinstance(catch_up_window, timedelta) or catch_up_window <= timedelta(0):
            raise InvalidOption(
                f"{task.name}: catch_up_window must be a positive timedelta, "
                f"not {catch_up_window!r}"
            )
        if catch_up != "all":
            raise InvalidOption(f"{task.name}: catch_up_window only applies to catch_up='all'")
    kwargs = dict(kwargs or {})
    args_json = task.encoder.encode(kwargs)  # refuse bad arguments now, not at the tick
    task.limit_columns(kwargs)  # and a concurrency key that cannot be formatted from them
    schedule = Schedule(
        name=name or task.name, cron=cron, task=task, kwargs=kwargs, tz=tz,
        catch_up=catch_up, catch_up_window=catch_up_window, args_json=args_json,
    )
    try:
        croniter(cron, datetime.now(zone)).get_next(datetime)
    except CroniterError as exc:
        raise InvalidOption(f"{schedule.name}: {cron!r} never fires ({exc})") from None
    return schedule


def pause(q: Queries, conn: AnyConnection, name: str) -> None:
    """Pause schedule ``name``: from the commit on, its ticks are recorded as skipped
    (reason ``paused``) and enqueue nothing, until :func:`resume`. Workers' sync keeps
    it paused (a restart or deploy does not resume it)."""
    if periodic.set_paused(q, name, True).run(conn) is None:
        raise ScheduleNotFound(name)


def resume(q: Queries, conn: AnyConnection, name: str) -> None:
    """Resume schedule ``name``. No catch-up: the ticks due while it was paused, those a
    worker had not handled yet included, are skipped (reason ``paused``), as for a
    schedule enabled again; the next job is for the first tick after the resume."""
    if periodic.set_paused(q, name, False).run(conn) is None:
        raise ScheduleNotFound(name)


def run_now(q: Queries, conn: AnyConnection, name: str) -> datetime:
    """Ask the workers to enqueue one job of schedule ``name`` now (paused or not); returns
    when the request was made (the ledger row of the run carries it as its ``tick``,
    reason ``manual``; see :func:`manual_run`). The schedule's ticks are unaffected. A
    request already pending is not doubled. Raises :class:`ScheduleDisabled` for a
    schedule no worker's code declares."""
    row = periodic.request_run(q, name).run(conn)
    if row is None:
        raise ScheduleNotFound(name)
    if not row["enabled"]:
        raise ScheduleDisabled(name)
    requested: datetime = row["run_requested_at"]
    return requested


def manual_run(q: Queries, conn: AnyConnection, name: str, requested_at: datetime
               ) -> dict[str, Any] | None:
    """The ledger row of the run :func:`run_now` requested at ``requested_at`` (outcome
    ``enqueued`` with its ``job_id``, or ``skipped`` as a ``duplicate`` of the job holding
    the task's unique key); None while no worker has taken the request."""
    return periodic.manual_tick(q, name, requested_at).run(conn)
