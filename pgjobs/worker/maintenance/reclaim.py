"""Reclaim: running jobs whose lease expired (their worker died, hung or lost the network)
return to ``available`` as a recovery, or to ``dead`` once recovered ``budget`` times.
Recovered jobs notify their queue, so idle workers claim them at once."""

from __future__ import annotations

import logging

from ...core.hooks import Hooks
from ...core.types import SweptJob
from ...db import leases
from ...db.queries import Queries
from .base import AnyAsyncConnection, Step, report

log = logging.getLogger("pgjobs.maintenance")


class Reclaimer(Step):
    name = "reclaim"

    def __init__(self, queries: Queries, channel: str, interval: float, budget: int,
                 hooks: Hooks, limit: int = 1000) -> None:
        super().__init__(interval)
        self.query = leases.reclaim(queries, budget, channel, limit)
        self.hooks = hooks

    async def step(self, conn: AnyAsyncConnection) -> list[SweptJob]:
        jobs = await self.query.arun(conn)
        for job in jobs:
            log.warning("reclaimed job %s from a lost worker: now %s", job.id, job.state)
        report(self.hooks, "reclaimed", jobs)
        return jobs
