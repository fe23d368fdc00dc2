"""Periodic declarations: ``@app.periodic`` validates a schedule for a registered task."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from croniter.croniter import CroniterError

from ..core.errors import ConfigurationError, InvalidOption
from ..core.schedule import CATCH_UP_POLICIES, Schedule
from .task import Task


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
