"""Periodic: enqueue the due ticks of the app's cron schedules.

There is no leader: each tick is claimed by a compare-and-set on the schedule's
``periodic`` row in the same transaction as the tick's job insert, so any number of
workers enqueue each (schedule, tick) exactly once. The same transaction writes the
ledger (``periodic_ticks``): one row per tick decided, enqueued or passed over, so it is
exact too. Tick times come from the database clock. A burst worker (drain, then exit)
does not run this step.

A paused schedule's ticks are decided all the same, and recorded as skipped. An
operator's run request (``pgjobs periodic run-now``) is taken here too, by compare-and-set
on the request, and never moves ``last_tick``.

A worker ticks only the schedules whose job goes to a queue it serves (``--queues``): a
worker of other queues would otherwise keep filling a queue that nobody may serve, and a
schedule is then late exactly when its queue has no worker, as ``pgjobs status`` says.
Every worker still syncs the whole set of schedules (the code's declarations).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import datetime

import psycopg

from ...core import failpoints
from ...core.schedule import TICKS_PER_TRANSACTION, Schedule
from ...db import periodic
from ...db.connection import TRANSIENT
from ...db.periodic import TickEntry
from ..host import Host
from .base import AnyAsyncConnection, Step

log = logging.getLogger("pgjobs.periodic")


class PeriodicEnqueuer(Step):
    """Enqueue the due ticks of the app's schedules."""

    name = "periodic"

    def __init__(self, app: Host, interval: float = 1.0,
                 queues: Iterable[str] | None = None) -> None:
        super().__init__(interval)
        self.app = app
        self.queries = app.queries
        self.synced = False
        self.queues = None if queues is None else frozenset(queues)
        """The queues this worker serves (None: all, as a worker of every task's queue)."""

    @property
    def schedules(self) -> Mapping[str, Schedule]:
        """Every schedule of the app: what :meth:`sync` writes."""
        return self.app.schedules

    @property
    def ticked(self) -> Mapping[str, Schedule]:
        """The schedules this worker enqueues: those whose job goes to a queue it serves."""
        if self.queues is None:
            return self.app.schedules
        return {name: s for name, s in self.app.schedules.items()
                if s.task.opts.queue in self.queues}

    async def sync(self, conn: AnyAsyncConnection) -> list[str]:
        """Upsert the code's schedules and disable the rows of this app's owner
        (``periodic_owner``) that are no longer in the code; returns the names disabled.
        An app without schedules leaves the table alone."""
        schedules = list(self.schedules.values())
        if not schedules:
            self.synced = True
            return []
        owner = self.app.config.periodic_owner
        async with conn.transaction():
            await periodic.upsert(self.queries, schedules, owner).arun(conn)
            disabled = await periodic.disable_missing(
                self.queries, [s.name for s in schedules], owner).arun(conn)
        for name in disabled:
            log.warning("periodic schedule %r is no longer in the code: disabled", name)
        self.synced = True
        return disabled

    async def step(self, conn: AnyAsyncConnection) -> list[int]:
        """Enqueue every due tick and requested run; returns the ids of the jobs this
        worker enqueued.

        A lost connection propagates (the caller reconnects); any other failure of one
        schedule is logged and leaves the other schedules running.
        """
        if not self.schedules:
            return []
        ticked = self.ticked
        try:
            if not self.synced:
                await self.sync(conn)
            if not ticked:
                return []
            rows = await periodic.state(self.queries, list(ticked)).arun(conn)
        except psycopg.errors.IdleInTransactionSessionTimeout as exc:
            raise psycopg.OperationalError(str(exc)) from exc
        enqueued: list[int] = []
        for row in rows:
            schedule = ticked.get(row["name"])
            if schedule is None:
                continue
            try:
                if row["run_requested_at"] is not None:
                    enqueued += await self.run_requested(conn, schedule)
                enqueued += await self.advance(
                    conn, schedule, row["base"], row["last_tick"], row["now"],
                    row["paused"], row["resumed_at"])
            except psycopg.errors.IdleInTransactionSessionTimeout as exc:
                # The server ended this session while it sat in a tick transaction (see
                # periodic_advance): a lost connection, for whoever runs this step.
                raise psycopg.OperationalError(str(exc)) from exc
            except TRANSIENT:
                raise
            except Exception:
                log.exception("periodic %s: enqueueing its tick failed; trying again in %ss",
                              schedule.name, self.interval)
        return enqueued

    async def advance(
        self, conn: AnyAsyncConnection, schedule: Schedule, base: datetime,
        last_tick: datetime | None, now: datetime, paused: bool = False,
        resumed_at: datetime | None = None,
    ) -> list[int]:
        """Enqueue ``schedule``'s due ticks and record every tick decided in the ledger,
        one transaction per chunk of ticks."""
        enqueued: list[int] = []
        while True:
            plan = schedule.plan(base, now, paused=paused, resumed_at=resumed_at)
            if plan.last_tick is None:
                return enqueued
            async with conn.transaction():
                won = await periodic.advance(self.queries, schedule.name, plan.last_tick,
                                             last_tick, paused, resumed_at).arun(conn)
                if not won:
                    return enqueued  # another worker handled this tick
                failpoints.hit("periodic_after_advance")  # holding the row lock
                entries = [TickEntry(p.last, p.first, p.outcome, p.reason)
                           for p in plan.passed]
                ids = []
                for due in plan.due:
                    entry = await self.enqueue(conn, schedule, due.tick, due.reason)
                    entries.append(entry)
                    if entry.outcome == "enqueued" and entry.job_id is not None:
                        ids.append(entry.job_id)
                await periodic.record(self.queries, schedule.name, entries,
                                      ids[-1] if ids else None).arun(conn)
            _log(schedule, entries)
            enqueued += ids
            if len(plan.due) < TICKS_PER_TRANSACTION:
                return enqueued
            base = last_tick = plan.last_tick

    async def run_requested(self, conn: AnyAsyncConnection, schedule: Schedule) -> list[int]:
        """Enqueue the run an operator asked for (``pgjobs periodic run-now``), if this
        worker takes the request; the schedule's ticks are left as they are."""
        async with conn.transaction():
            requested = await periodic.take_run(self.queries, schedule.name).arun(conn)
            if requested is None:
                return []  # another worker took it
            entry = await self.enqueue(conn, schedule, requested, "manual")
            await periodic.record(self.queries, schedule.name, [entry], None).arun(conn)
        _log(schedule, [entry])
        return [entry.job_id] if entry.outcome == "enqueued" and entry.job_id else []

    async def enqueue(self, conn: AnyAsyncConnection, schedule: Schedule, tick: datetime,
                      reason: str) -> TickEntry:
        """One job of ``schedule`` for ``tick``, and its ledger entry."""
        # The ordinary enqueue statement: unique keys, key limits and whatever else
        # enqueue learns apply to tick jobs too. A duplicate enqueues nothing.
        job = await schedule.task.enqueue_async(conn, **schedule.kwargs)
        if job.duplicate:
            return TickEntry(tick, tick, "skipped", "duplicate", job.id)
        return TickEntry(tick, tick, "enqueued", reason, job.id)


def _log(schedule: Schedule, entries: Iterable[TickEntry]) -> None:
    for e in entries:
        if e.outcome == "enqueued":
            what = "run requested at" if e.reason == "manual" else "tick"
            log.info("periodic %s: %s %s enqueued as job %s", schedule.name, what,
                     e.tick.isoformat(), e.job_id)
        elif e.reason == "duplicate":
            log.info("periodic %s: tick %s skipped: job %s still holds the unique key",
                     schedule.name, e.tick.isoformat(), e.job_id)
        else:
            # A paused schedule's ticks were asked for: DEBUG, not a line every tick.
            level = logging.DEBUG if e.reason == "paused" else logging.INFO
            ticks = (e.tick.isoformat() if e.first_tick == e.tick
                     else f"{e.first_tick.isoformat()} to {e.tick.isoformat()}")
            log.log(level, "periodic %s: tick(s) %s %s (%s)", schedule.name, ticks,
                    e.outcome, e.reason)
