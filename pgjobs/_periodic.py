"""Periodic (cron) jobs: schedules declared in code, ticks enqueued by every worker.

    @app.periodic("*/5 * * * *")          # stacked above @app.job
    @app.job(queue="reports")
    def refresh_reports() -> None: ...

Every worker process runs :class:`PeriodicEnqueuer` in its maintenance loop. There is no
leader: each tick is claimed by a compare-and-set on the schedule's ``periodic`` row in
the same transaction as the tick's job insert, so any number of workers enqueue each
(schedule, tick) exactly once. Tick times come from the database clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from croniter import croniter
from croniter.croniter import CroniterError

from . import _failpoints
from ._db import TRANSIENT
from ._errors import ConfigurationError, InvalidOption

if TYPE_CHECKING:
    from ._app import App, Task

log = logging.getLogger("pgjobs.periodic")

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
    task: Task[..., Any] = field(repr=False)
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


def make_schedule(
    task: Task[..., Any], cron: str, *, name: str | None = None,
    kwargs: Mapping[str, Any] | None = None, tz: str = "UTC", catch_up: str = "latest",
    catch_up_window: timedelta | None = None,
) -> Schedule:
    """Validate a schedule for ``task`` (raising a typed error for bad input)."""
    from ._app import Task

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
    task._limits(kwargs)  # and a concurrency key that cannot be formatted from them
    schedule = Schedule(
        name=name or task.name, cron=cron, task=task, kwargs=kwargs, tz=tz,
        catch_up=catch_up, catch_up_window=catch_up_window, args_json=args_json,
    )
    try:
        croniter(cron, datetime.now(zone)).get_next(datetime)
    except CroniterError as exc:
        raise InvalidOption(f"{schedule.name}: {cron!r} never fires ({exc})") from None
    return schedule


AnyAsyncConnection = psycopg.AsyncConnection[Any]


class PeriodicEnqueuer:
    """Maintenance step: enqueue the due ticks of the app's schedules."""

    def __init__(self, app: App, interval: float = 1.0) -> None:
        self.app = app
        self.queries = app.queries
        self.interval = interval
        self.next_run = 0.0
        self.synced = False

    @property
    def schedules(self) -> dict[str, Schedule]:
        return self.app.schedules

    def due(self) -> bool:
        return time.monotonic() >= self.next_run

    async def sync(self, conn: AnyAsyncConnection) -> list[str]:
        """Upsert the code's schedules and disable the rows no longer in the code;
        returns the names disabled. An app without schedules leaves the table alone."""
        schedules = sorted(self.schedules.values(), key=lambda s: s.name)
        if not schedules:
            self.synced = True
            return []
        params = {
            "names": [s.name for s in schedules],
            "schedules": [s.cron for s in schedules],
            "tasks": [s.task.name for s in schedules],
            "queues": [s.task.opts.queue for s in schedules],
            "args": [s.args_json for s in schedules],
            "timezones": [s.tz for s in schedules],
            "catch_ups": [s.catch_up for s in schedules],
            "windows": [s.catch_up_window for s in schedules],
        }
        async with conn.transaction():
            await conn.execute(self.queries.periodic_upsert, params)
            cursor = await conn.execute(
                self.queries.periodic_disable_missing, {"names": params["names"]}
            )
            disabled = [str(row[0]) for row in await cursor.fetchall()]
        for name in disabled:
            log.warning("periodic schedule %r is no longer in the code: disabled", name)
        self.synced = True
        return disabled

    async def run_once(self, conn: AnyAsyncConnection) -> list[int]:
        """Enqueue every due tick; returns the ids of the jobs this worker enqueued.

        A lost connection propagates (the caller reconnects); any other failure of one
        schedule is logged and leaves the other schedules running.
        """
        self.next_run = time.monotonic() + self.interval
        if not self.schedules:
            return []
        try:
            if not self.synced:
                await self.sync(conn)
            cursor = await conn.execute(
                self.queries.periodic_state, {"names": list(self.schedules)}
            )
            rows = await cursor.fetchall()
        except psycopg.errors.IdleInTransactionSessionTimeout as exc:
            raise psycopg.OperationalError(str(exc)) from exc
        enqueued: list[int] = []
        for name, base, last_tick, now in rows:
            schedule = self.schedules.get(name)
            if schedule is None:
                continue
            try:
                enqueued += await self.advance(conn, schedule, base, last_tick, now)
            except psycopg.errors.IdleInTransactionSessionTimeout as exc:
                # The server ended this session while it sat in a tick transaction (see
                # periodic_advance): a lost connection, for whoever runs this step.
                raise psycopg.OperationalError(str(exc)) from exc
            except TRANSIENT:
                raise
            except Exception:
                log.exception("periodic %s: enqueueing its tick failed; trying again in %ss",
                              name, self.interval)
        return enqueued

    async def advance(
        self, conn: AnyAsyncConnection, schedule: Schedule, base: datetime,
        last_tick: datetime | None, now: datetime,
    ) -> list[int]:
        """Enqueue ``schedule``'s due ticks, one transaction per chunk of ticks."""
        enqueued: list[int] = []
        while True:
            ticks, new_last = schedule.due(base, now)
            if new_last is None:
                return enqueued
            async with conn.transaction():
                cursor = await conn.execute(self.queries.periodic_advance, {
                    "name": schedule.name, "new": new_last, "old": last_tick,
                })
                if await cursor.fetchone() is None:
                    return enqueued  # another worker handled this tick
                _failpoints.hit("periodic_after_advance")  # holding the row lock
                ids, stamps = [], []
                for tick in ticks:
                    # The ordinary enqueue statement: unique keys, key limits and
                    # whatever else enqueue learns apply to tick jobs too.
                    job = await schedule.task.enqueue_async(conn, **schedule.kwargs)
                    if not job.duplicate:
                        ids.append(job.id)
                        stamps.append(tick.isoformat())
                await conn.execute(self.queries.periodic_record, {
                    "name": schedule.name, "ids": ids, "ticks": stamps,
                    "last_job_id": ids[-1] if ids else None,
                })
            for job_id, stamp in zip(ids, stamps, strict=True):
                log.info("periodic %s: tick %s enqueued as job %s", schedule.name, stamp, job_id)
            enqueued += ids
            if not ticks:
                log.info("periodic %s: missed tick %s passed over (catch_up=%s)",
                         schedule.name, new_last.isoformat(), schedule.catch_up)
            if len(ticks) < TICKS_PER_TRANSACTION:
                return enqueued
            base = last_tick = new_last
