"""Which claim statement a claim sends: the plain one while no limit concerns the worker."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg import sql

from ..db import claim
from ..db.queries import Queries


class ClaimRouter:
    """Chooses a worker's claim statement.

    ``job_claim`` plans in a fraction of the time of ``job_claim_limited``, and a claim is
    planned on every call, so a worker sends it while no limit concerns it. It sends
    ``job_claim_limited`` when one of its queues has a limit (re-read about once a
    second) or one of its tasks has a concurrency key, and once a second anyway (a
    sweep): keyed jobs that this worker's code does not know as keyed (enqueued by
    another version of the code, or into another queue) are then claimed too.
    Correctness never depends on this choice: ``job_claim`` skips limited queues and
    keyed jobs by itself.

    The periodic work (re-reading the limits, the sweep) is done by :meth:`when_idle`,
    once the worker has claimed every job due, so that it never stands between a
    notified job and its claim; :meth:`statement` does it only when it is overdue, for a
    worker so busy that it is never idle.
    """

    def __init__(self, queries: Queries, queues: Sequence[str], keyed: bool,
                 refresh: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.queries = queries
        self.queues = list(queues)
        self.keyed = keyed
        self.refresh = refresh
        self.clock = clock
        self.limited: frozenset[str] = frozenset()
        self.next_refresh = 0.0
        self.next_sweep = 0.0

    async def statement(self, conn: psycopg.AsyncConnection[Any]) -> sql.SQL | sql.Composed:
        """The statement for a claim now."""
        now = self.clock()
        if now >= self.next_refresh + self.refresh:
            await self._refresh(conn, now)
        if self.keyed or self.limited or now >= self.next_sweep + self.refresh:
            self.next_sweep = now + self.refresh
            return self.queries.job_claim_limited
        return self.queries.job_claim

    async def when_idle(self, conn: psycopg.AsyncConnection[Any]) -> sql.SQL | None:
        """Called when a claim found no more jobs due: re-read the limits if due, and
        return the sweep's statement if one is due (else None)."""
        now = self.clock()
        if now >= self.next_refresh:
            await self._refresh(conn, now)
        if self.keyed or self.limited or now < self.next_sweep:
            return None  # every claim is limited already, or a sweep is not due
        self.next_sweep = now + self.refresh
        return self.queries.job_claim_limited

    async def _refresh(self, conn: psycopg.AsyncConnection[Any], now: float) -> None:
        self.next_refresh = now + self.refresh
        names = await claim.limited_queues(self.queries, self.queues).arun(conn)
        self.limited = frozenset(str(name) for name in names)
