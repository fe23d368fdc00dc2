"""Maintenance steps any worker may run: each is safe to run concurrently (SKIP LOCKED or
compare-and-set), so there is no leader to lose."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Protocol

import psycopg

from ._db import TRANSIENT, Connector
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


class Step(Protocol):
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


class Maintenance:
    """Runs steps on a connection of their own, so a slow step never delays a claim or a
    heartbeat. A step that fails is logged and tried again at its next interval; a lost
    connection is reopened with backoff."""

    def __init__(self, connector: Connector, steps: Sequence[Step]) -> None:
        self.connector = connector
        self.steps = list(steps)

    async def run(self) -> None:
        if not self.steps:
            return
        while True:
            for step in self.steps:
                if not step.due():
                    continue
                try:
                    conn = await self.connector.get()
                    await step.run_once(conn)
                except TRANSIENT as exc:
                    step.next_run = 0.0
                    await self.connector.backoff(exc)
                    break
                except Exception:
                    step.next_run = time.monotonic() + step.interval
                    log.exception("maintenance step %s failed; retrying in %ss",
                                  type(step).__name__, step.interval)
            wake = min(step.next_run for step in self.steps)
            await asyncio.sleep(max(0.01, wake - time.monotonic()))


def interval(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)
