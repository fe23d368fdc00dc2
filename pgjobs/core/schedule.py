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

    def previous_tick(self, tick: datetime) -> datetime | None:
        """The newest tick before ``tick``."""
        return self.latest_tick(tick - EPSILON)

    def plan(self, base: datetime, now: datetime, *, paused: bool = False,
             resumed_at: datetime | None = None) -> Plan:
        """What to do now, given the last tick handled (``base``): the ticks to enqueue,
        the ticks passed over (each with its ledger outcome and reason) and the
        schedule's new ``last_tick``. Every tick in (base, new last_tick] is in exactly
        one of the two."""
        latest = self.latest_tick(now)
        if latest is None or latest <= base:
            return Plan([], [], None)
        first = self.next_tick(base) or latest  # the oldest tick due
        if paused:
            return Plan([], [Passed(first, latest, "skipped", "paused")], latest)
        passed: list[Passed] = []
        if resumed_at is not None and resumed_at > base:
            # Ticks due while paused that no worker handled then: skipped as paused too,
            # so a resume never brings a burst of old ticks.
            held = self.latest_tick(min(resumed_at, now))
            if held is not None and held > base:
                passed.append(Passed(first, held, "skipped", "paused"))
                if held == latest:
                    return Plan([], passed, latest)
                base, first = held, self.next_tick(held) or latest
        if self.catch_up == "all":
            return self._plan_all(base, first, now, latest, passed)
        if self.catch_up == "skip" and now - latest > ON_TIME:
            passed.append(Passed(first, latest, "skipped", "catch_up"))
            return Plan([], passed, latest)
        older = self.previous_tick(latest)
        if older is not None and first <= older:
            passed.append(Passed(first, older, "skipped", "catch_up"))
        return Plan([Due(latest, _lateness(latest, now))], passed, latest)

    def _plan_all(self, base: datetime, first: datetime, now: datetime, latest: datetime,
                  passed: list[Passed]) -> Plan:
        horizon = now - self.window
        if base < horizon:
            too_old = self.latest_tick(horizon)
            if too_old is not None and too_old > base:
                passed.append(Passed(first, too_old, "missed", "outside_window"))
        ticks = self.ticks_between(max(base, horizon), now, TICKS_PER_TRANSACTION)
        due = [Due(tick, _lateness(tick, now)) for tick in ticks]
        if len(ticks) == TICKS_PER_TRANSACTION:
            return Plan(due, passed, ticks[-1])  # more to come in the next transaction
        return Plan(due, passed, latest)


@dataclass(frozen=True, slots=True)
class Due:
    """A tick to enqueue, and its ledger reason: ``on_time`` (found at most
    :data:`ON_TIME` late) or ``caught_up`` (enqueued later, by the catch-up policy)."""

    tick: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class Passed:
    """Ticks passed over together (every tick of the cron from ``first`` to ``last``),
    with their ledger outcome (``skipped``, ``missed``) and reason (``paused``,
    ``catch_up``, ``outside_window``)."""

    first: datetime
    last: datetime
    outcome: str
    reason: str


@dataclass(frozen=True, slots=True)
class Plan:
    """One decision about a schedule's due ticks (:meth:`Schedule.plan`)."""

    due: list[Due]
    passed: list[Passed]
    last_tick: datetime | None
    """The schedule's new ``last_tick`` (None: nothing is due)."""


def _lateness(tick: datetime, now: datetime) -> str:
    return "on_time" if now - tick <= ON_TIME else "caught_up"


def next_tick(schedule: str, tz: str, after: datetime) -> datetime | None:
    """The first tick of ``schedule`` (in time zone ``tz``) after ``after``; None when the
    expression or zone is invalid."""
    try:
        tick = croniter(schedule, after.astimezone(ZoneInfo(tz))).get_next(datetime)
    except (CroniterError, ValueError, KeyError):
        return None
    return tick  # type: ignore[no-any-return]
