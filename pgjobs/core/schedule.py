"""A cron schedule's arithmetic: which ticks are due, from the database's clock.

    @app.periodic("*/5 * * * *")          # stacked above @app.job
    @app.job(queue="reports")
    def refresh_reports() -> None: ...

A :class:`Schedule` is declared by the client (``App.periodic``, which validates it) and
ticked by workers (``worker.maintenance.periodic``), which enqueue each tick exactly once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from croniter import croniter
from croniter.croniter import CroniterError

from .options import JobOptions
from .types import Enqueued


class ScheduledTask(Protocol):
    """What a schedule needs of its task: a name, options, and an async enqueue."""

    @property
    def name(self) -> str: ...

    @property
    def opts(self) -> JobOptions: ...

    async def enqueue_async(self, aconn: Any, /, **kwargs: Any) -> Enqueued: ...


CATCH_UP_POLICIES = ("latest", "skip", "all")
ON_TIME = timedelta(seconds=60)
"""With ``catch_up="skip"``, a tick found at most this late is on time and enqueued; an
older one was missed (no worker ran) and is passed over."""
DEFAULT_CATCH_UP_WINDOW = timedelta(hours=1)
"""With ``catch_up="all"``, how far back missed ticks are enqueued unless the schedule
says otherwise."""
TICKS_PER_TRANSACTION = 100
"""Most ticks one transaction enqueues while catching up (the rest follow at once)."""
EPSILON = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Schedule:
    """One cron entry: enqueue ``task`` with ``kwargs`` at every tick of ``cron``."""

    name: str
    cron: str
    task: ScheduledTask = field(repr=False)
    kwargs: Mapping[str, Any]
    tz: str = "UTC"
    catch_up: str = "latest"
    catch_up_window: timedelta | None = None
    args_json: str = field(default="{}", repr=False)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)

    @property
    def window(self) -> timedelta:
        return self.catch_up_window or DEFAULT_CATCH_UP_WINDOW

    def latest_tick(self, now: datetime) -> datetime | None:
        """The newest tick at or before ``now`` (None for a cron that never fires)."""
        try:
            tick = croniter(self.cron, (now + EPSILON).astimezone(self.zone)).get_prev(datetime)
        except CroniterError:
            return None
        return tick.astimezone(UTC)  # type: ignore[no-any-return]

    def next_tick(self, after: datetime) -> datetime | None:
        """The first tick after ``after``."""
        try:
            tick = croniter(self.cron, after.astimezone(self.zone)).get_next(datetime)
        except CroniterError:
            return None
        return tick.astimezone(UTC)  # type: ignore[no-any-return]

    def ticks_between(self, start: datetime, end: datetime, limit: int) -> list[datetime]:
        """Up to ``limit`` ticks in (start, end], oldest first."""
        ticks: list[datetime] = []
        try:
            it = croniter(self.cron, start.astimezone(self.zone))
            while len(ticks) < limit:
                tick = it.get_next(datetime).astimezone(UTC)
                if tick > end:
                    break
                ticks.append(tick)
        except CroniterError:
            pass
        return ticks

    def due(self, base: datetime, now: datetime) -> tuple[list[datetime], datetime | None]:
        """The ticks to enqueue now, given the last tick handled (``base``), and the
        schedule's new ``last_tick`` (None: nothing is due)."""
        latest = self.latest_tick(now)
        if latest is None or latest <= base:
            return [], None
        if self.catch_up == "latest":
            return [latest], latest
        if self.catch_up == "skip":
            return ([latest] if now - latest <= ON_TIME else []), latest
        ticks = self.ticks_between(max(base, now - self.window), now, TICKS_PER_TRANSACTION)
        if len(ticks) == TICKS_PER_TRANSACTION:
            return ticks, ticks[-1]  # more to come in the next transaction
        return ticks, latest


def next_tick(schedule: str, tz: str, after: datetime) -> datetime | None:
    """The first tick of ``schedule`` (in time zone ``tz``) after ``after``; None when the
    expression or zone is invalid."""
    try:
        tick = croniter(schedule, after.astimezone(ZoneInfo(tz))).get_next(datetime)
    except (CroniterError, ValueError, KeyError):
        return None
    return tick  # type: ignore[no-any-return]
