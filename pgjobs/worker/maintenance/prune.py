"""Retention: finished jobs past their state's retention, then batches left empty, then
rows of workers gone for long, then old rows of the periodic ledger, deleted in bounded
statements.

Only the worker holding the per-schema advisory lock deletes at a time; the others find it
taken and do nothing. A run that hits the limit runs again a second later, so a backlog
drains in steps, each one short, without delaying the reclaim that shares this
connection for long.
"""

from __future__ import annotations

import logging
import zlib
from collections import Counter
from datetime import timedelta

from ...db import retention
from ...db.queries import Queries
from ..config import Retention
from .base import AnyAsyncConnection, Step

log = logging.getLogger("pgjobs.maintenance")


def _interval(seconds: float | None) -> timedelta | None:
    return None if seconds is None else timedelta(seconds=seconds)


def prune_lock(schema: str) -> int:
    """The advisory lock key of one schema's pruner (two schemas never share one)."""
    return zlib.crc32(f"pgjobs prune {schema}".encode())


class Pruner(Step):
    """Deletes what ``policy`` no longer keeps, at most ``limit`` rows per kind a run."""

    name = "prune"

    def __init__(self, queries: Queries, policy: Retention, interval: float = 60.0,
                 limit: int = 5000) -> None:
        super().__init__(interval)
        self.limit = limit
        lock = prune_lock(queries.schema)
        periods = {"succeeded": _interval(policy.succeeded),
                   "cancelled": _interval(policy.cancelled),
                   "dead": _interval(policy.dead), "expired": _interval(policy.dead)}
        self.jobs = retention.jobs(queries, periods, limit, lock)
        longest = policy.longest()
        self.batches = None if longest is None else retention.batches(
            queries, timedelta(seconds=longest), limit, lock)
        self.workers = None if policy.workers is None else retention.workers(
            queries, timedelta(seconds=policy.workers), limit)
        self.ticks = None if policy.periodic_ticks is None else retention.periodic_ticks(
            queries, timedelta(seconds=policy.periodic_ticks), limit, lock)

    async def step(self, conn: AnyAsyncConnection) -> Counter[str]:
        """One bounded pass; returns the rows deleted by kind (job states, batches,
        workers, periodic_ticks)."""
        deleted: Counter[str] = Counter(str(state) for state in await self.jobs.arun(conn))
        if any(n >= self.limit for n in deleted.values()):
            self.again_in(1.0)
        if self.batches is not None:
            deleted["batches"] = await self.batches.arun(conn)
        if self.workers is not None:
            for worker_id, host, pid, state in await self.workers.arun(conn):
                log.info("pruned worker %s (%s pid %s, %s)", worker_id, host, pid, state)
                deleted["workers"] += 1
        if self.ticks is not None:
            deleted["periodic_ticks"] = await self.ticks.arun(conn)
            if deleted["periodic_ticks"] >= self.limit:
                self.again_in(1.0)
        deleted = +deleted
        if deleted:
            log.info("pruned %s", ", ".join(f"{n} {kind}" for kind, n in sorted(deleted.items())))
        return deleted
