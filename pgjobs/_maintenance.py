"""Maintenance steps any worker may run: each is safe to run concurrently (SKIP LOCKED or
compare-and-set), so there is no leader to lose. Each step is a small object with an
interval and ``run_once(conn)``; the worker runs the due ones between claims."""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg
from psycopg import sql

from ._queries import Queries

log = logging.getLogger("pgjobs.maintenance")


class Step:
    """One maintenance statement run every ``interval`` seconds."""

    def __init__(
        self, name: str, query: sql.Composed, params: dict[str, Any], interval: float
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
        super().__init__("reclaim", queries.job_reclaim, {"limit": 1000, "budget": budget},
                         interval)

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
