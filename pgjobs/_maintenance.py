"""Maintenance steps any worker may run: each is safe to run concurrently (SKIP LOCKED or
compare-and-set), so there is no leader to lose. Each step is a small object with an
interval and ``run_once(conn)``; the worker runs the due ones between claims."""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import psycopg
from psycopg import sql

from ._db import TRANSIENT, Connector
from ._queries import Queries

log = logging.getLogger("pgjobs.maintenance")


class Step:
    """One maintenance statement run every ``interval`` seconds."""

    def __init__(
        self, name: str, query: sql.SQL | sql.Composed, params: dict[str, Any], interval: float
    ) -> None:
        self.name = name
        self.query = query
        self.params = params
        self.interval = interval
        self.next_run = 0.0

    def due(self) -> bool:
        return time.monotonic() >= self.next_run

    async def run_once(self, conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
        self.next_run = time.monotonic() + self.interval
        cursor = await conn.execute(self.query, self.params)
        rows = await cursor.fetchall() if cursor.description else []
        if rows or cursor.rowcount > 0:
            self.report(rows, cursor.rowcount)
        return rows

    def report(self, rows: list[tuple[Any, ...]], count: int) -> None:
        log.info("%s: %d row(s)", self.name, count)


class Reclaimer(Step):
    """Returns jobs whose lease expired to ``available`` (a recovery), or to ``dead``
    once a job has been recovered ``budget`` times."""

    def __init__(self, queries: Queries, interval: float, budget: int) -> None:
        params = {"limit": 1000, "budget": budget, "channel": f"pgjobs_{queries.schema}"}
        super().__init__("reclaim", queries.job_reclaim, params, interval)

    def report(self, rows: list[tuple[Any, ...]], count: int) -> None:
        for job_id, state in rows:
            log.warning("reclaimed job %s from a lost worker: now %s", job_id, state)


def default_steps(queries: Queries, lease: float, budget: int) -> list[Step]:
    reclaim_every = min(lease / 2, 10.0)
    return [
        Reclaimer(queries, reclaim_every, budget),
        Step("expire", queries.job_expire, {"limit": 1000}, 1.0),
        Step("prune unique keys", queries.unique_key_prune, {"limit": 1000}, 30.0),
        Step("prune receipts", queries.enqueue_receipt_prune, {"limit": 10_000}, 60.0),
    ]


class StepLike(Protocol):
    """A maintenance step: ``run_once`` when ``due()``; ``run_once`` sets ``next_run``
    (monotonic seconds) ``interval`` seconds ahead."""

    interval: float
    next_run: float

    def due(self) -> bool: ...

    async def run_once(self, conn: psycopg.AsyncConnection[Any]) -> Any: ...


class LimitKeyPruner:
    """Deletes ``limit_keys`` rows of keys nobody used for an hour (or their rate period)."""

    def __init__(self, queries: Queries, interval: float = 300.0, limit: int = 1000) -> None:
        self.queries = queries
        self.interval = interval
        self.limit = limit
        self.next_run = time.monotonic() + interval

    def due(self) -> bool:
        return time.monotonic() >= self.next_run

    async def run_once(self, conn: psycopg.AsyncConnection[Any]) -> int:
        self.next_run = time.monotonic() + self.interval
        cursor = await conn.execute(self.queries.limit_key_prune, {"limit": self.limit})
        return cursor.rowcount


@dataclass(frozen=True, slots=True)
class Retention:
    """How long finished jobs and dead worker rows are kept, in seconds (None: forever)."""

    succeeded: float | None = 86_400.0
    cancelled: float | None = 86_400.0
    dead: float | None = 7 * 86_400.0
    """Dead and expired jobs."""
    workers: float | None = 86_400.0

    def longest(self) -> float | None:
        """The longest finite job retention (None: every job state is kept forever). A
        batch row outlives it; one whose jobs are kept forever stays with them."""
        periods = [p for p in (self.succeeded, self.cancelled, self.dead) if p is not None]
        return max(periods) if periods else None


def _interval(seconds: float | None) -> timedelta | None:
    return None if seconds is None else timedelta(seconds=seconds)


def prune_lock(schema: str) -> int:
    """The advisory lock key of one schema's pruner (two schemas never share one)."""
    return zlib.crc32(f"pgjobs prune {schema}".encode())


class Pruner:
    """Deletes finished jobs past their retention, then batches left empty, then worker
    rows past theirs, in bounded statements. Only the worker holding the per-schema
    advisory lock deletes at a time; the others find it taken and do nothing. A run that
    hits the limit runs again a second later, so a backlog drains in steps, each one
    short, without delaying the reclaim that shares this connection for long."""

    def __init__(self, queries: Queries, retention: Retention, interval: float = 60.0,
                 limit: int = 5000) -> None:
        self.queries = queries
        self.retention = retention
        self.interval = interval
        self.limit = limit
        self.next_run = 0.0
        lock = prune_lock(queries.schema)
        self.job_params = {
            "succeeded": _interval(retention.succeeded),
            "cancelled": _interval(retention.cancelled),
            "dead": _interval(retention.dead), "expired": _interval(retention.dead),
            "limit": limit, "lock": lock,
        }
        longest = retention.longest()
        self.batch_params = None if longest is None else {
            "keep": _interval(longest), "limit": limit, "lock": lock}
        self.worker_params = None if retention.workers is None else {
            "keep": _interval(retention.workers), "limit": limit}

    def due(self) -> bool:
        return time.monotonic() >= self.next_run

    async def run_once(self, conn: psycopg.AsyncConnection[Any]) -> Counter[str]:
        """One bounded pass; returns the rows deleted by kind (job states, batches,
        workers)."""
        self.next_run = time.monotonic() + self.interval
        deleted: Counter[str] = Counter()
        cursor = await conn.execute(self.queries.job_prune, self.job_params)
        deleted.update(str(row[0]) for row in await cursor.fetchall())
        if any(n >= self.limit for n in deleted.values()):
            self.next_run = time.monotonic() + 1.0
        if self.batch_params is not None:
            cursor = await conn.execute(self.queries.batch_prune, self.batch_params)
            deleted["batches"] = max(cursor.rowcount, 0)
        if self.worker_params is not None:
            cursor = await conn.execute(self.queries.worker_prune, self.worker_params)
            for worker_id, host, pid, state in await cursor.fetchall():
                log.info("pruned worker %s (%s pid %s, %s)", worker_id, host, pid, state)
                deleted["workers"] += 1
        deleted = +deleted
        if deleted:
            log.info("pruned %s", ", ".join(f"{n} {kind}" for kind, n in sorted(deleted.items())))
        return deleted


class Maintenance:
    """Runs steps on a connection of their own, so a slow step never delays a claim or a
    heartbeat. A step that fails is logged and tried again at its next interval; a lost
    connection is reopened with backoff."""

    def __init__(self, connector: Connector, steps: Sequence[StepLike]) -> None:
        self.connector = connector
        self.steps = list(steps)

    async def run_due(self) -> None:
        """One pass: run every step that is due."""
        for step in self.steps:
            if not step.due():
                continue
            try:
                conn = await self.connector.get()
                await step.run_once(conn)
            except TRANSIENT as exc:  # (deadlocks too: they subclass OperationalError)
                step.next_run = 0.0
                await self.connector.backoff(exc)
                return
            except Exception:
                step.next_run = time.monotonic() + step.interval
                log.exception("maintenance step %s failed; retrying in %ss",
                              getattr(step, "name", type(step).__name__), step.interval)

    async def run(self) -> None:
        if not self.steps:
            return
        while True:
            wake = min(step.next_run for step in self.steps)
            await asyncio.sleep(max(0.01, wake - time.monotonic()))
            await self.run_due()

