"""Expire: available jobs past their ``expires_at`` end ``expired``. The claim already
skips them; this makes the outcome visible, and releases their unique holds and counts
them into their batch (through the triggers)."""

from __future__ import annotations

import logging

from ...core.hooks import Hooks
from ...core.types import SweptJob
from ...db import leases
from ...db.queries import Queries
from .base import AnyAsyncConnection, Step, report

log = logging.getLogger("pgjobs.maintenance")


class Expirer(Step):
    name = "expire"

    def __init__(self, queries: Queries, hooks: Hooks, interval: float = 1.0,
                 limit: int = 1000) -> None:
        super().__init__(interval)
        self.query = leases.expire(queries, limit)
        self.hooks = hooks

    async def step(self, conn: AnyAsyncConnection) -> list[SweptJob]:
        jobs = await self.query.arun(conn)
        if jobs:
            log.info("%s: %d row(s)", self.name, len(jobs))
        report(self.hooks, "expired", jobs)
        return jobs
