"""Maintenance steps any worker may run: each is safe to run concurrently (SKIP LOCKED or
compare-and-set), so there is no leader to lose."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

import psycopg

from ._queries import Queries

log = logging.getLogger("pgjobs.maintenance")


class Reclaimer:
    """Returns jobs whose lease expired to ``available`` (a recovery), or to ``dead``
    once a job has been recovered ``budget`` times."""

    def __init__(self, queries: Queries, interval: float, budget: int, limit: int = 1000) -> None:
        self.queries = queries
        self.interval = interval
        self.budget = budget
        self.limit = limit
        self.next_run = 0.0

    def due(self) -> bool:
        return time.monotonic() >= self.next_run

    async def run_once(self, conn: psycopg.AsyncConnection[Any]) -> list[tuple[int, str]]:
        self.next_run = time.monotonic() + self.interval
        params = {"limit": self.limit, "budget": self.budget}
        cursor = await conn.execute(self.queries.job_reclaim, params)
        rows = [(int(r[0]), str(r[1])) for r in await cursor.fetchall()]
        for job_id, state in rows:
            log.warning("reclaimed job %s from a lost worker: now %s", job_id, state)
        return rows


def interval(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)
