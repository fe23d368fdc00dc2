"""Periodic: enqueue the due ticks of the app's cron schedules.

There is no leader: each tick is claimed by a compare-and-set on the schedule's
``periodic`` row in the same transaction as the tick's job insert, so any number of
workers enqueue each (schedule, tick) exactly once. Tick times come from the database
clock. A burst worker (drain, then exit) does not run this step.

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
        """Upsert the code's schedules and disable the rows no longer in the code;
        returns the names disabled. An app without schedules leaves the table alone."""
        schedules = list(self.schedules.values())
        if not schedules:
            self.synced = True
            return []
        async with conn.transaction():
            await periodic.upsert(self.queries, schedules).arun(conn)
            disabled = await periodic.disable_missing(
                self.queries, [s.name for s in schedules]).arun(conn)
        for name in disabled:
            log.warning("periodic schedule %r is no longer in the code: disabled", name)
        self.synced = True
        return disabled

    async def step(self, conn: AnyAsyncConnection) -> list[int]:
        """Enqueue every due tick; returns the ids of the jobs this worker enqueued.

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
        for name, base, last_tick, now in rows:
            schedule = ticked.get(name)
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
                won = await periodic.advance(self.queries, schedule.name, new_last,
                                             last_tick).arun(conn)
                if not won:
                    return enqueued  # another worker handled this tick
                failpoints.hit("periodic_after_advance")  # holding the row lock
                ids, stamps = [], []
                for tick in ticks:
                    # The ordinary enqueue statement: unique keys, key limits and
                    # whatever else enqueue learns apply to tick jobs too.
                    job = await schedule.task.enqueue_async(conn, **schedule.kwargs)
                    if not job.duplicate:
                        ids.append(job.id)
                        stamps.append(tick.isoformat())
                await periodic.record(self.queries, schedule.name, ids, stamps,
                                      ids[-1] if ids else None).arun(conn)
            for job_id, stamp in zip(ids, stamps, strict=True):
                log.info("periodic %s: tick %s enqueued as job %s", schedule.name, stamp, job_id)
            enqueued += ids
            if not ticks:
                log.info("periodic %s: missed tick %s passed over (catch_up=%s)",
                         schedule.name, new_last.isoformat(), schedule.catch_up)
            if len(ticks) < TICKS_PER_TRANSACTION:
                return enqueued
            base = last_tick = new_last
