"""The base of every maintenance step: it owns the schedule (``interval``, ``next_run``,
``due``); a step only says what one run does."""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg

from ...core.hooks import EventKind, Hooks, JobEvent
from ...core.types import SweptJob
from ...db.statement import Query

log = logging.getLogger("pgjobs.maintenance")

AnyAsyncConnection = psycopg.AsyncConnection[Any]


class Step:
    """One maintenance step, run every ``interval`` seconds (the first run after
    ``first_delay``). Subclasses implement :meth:`step`."""

    name = "step"

    def __init__(self, interval: float, first_delay: float = 0.0) -> None:
        self.interval = interval
        self.next_run = time.monotonic() + first_delay if first_delay else 0.0

    def due(self) -> bool:
        return time.monotonic() >= self.next_run

    def again_in(self, seconds: float) -> None:
        """Run next in ``seconds`` instead of a whole interval (a backlog, a failure)."""
        self.next_run = time.monotonic() + seconds

    async def run_once(self, conn: AnyAsyncConnection) -> Any:
        """One run now; the next is due an interval later (unless the step says sooner)."""
        self.again_in(self.interval)
        return await self.step(conn)

    async def step(self, conn: AnyAsyncConnection) -> Any:
        """What one run does, on the maintenance connection (autocommit)."""
        raise NotImplementedError


class QueryStep(Step):
    """A step that runs one statement (a ``db`` ``Query``) and logs the rows it touched."""

    def __init__(self, query: Query[Any], interval: float, first_delay: float = 0.0,
                 report: bool = True) -> None:
        super().__init__(interval, first_delay)
        self.query = query
        self.report = report

    async def step(self, conn: AnyAsyncConnection) -> Any:
        result = await self.query.arun(conn)
        count = len(result) if isinstance(result, list) else int(result)
        if count and self.report:
            log.info("%s: %d row(s)", self.name, count)
        return result


def report(hooks: Hooks, kind: EventKind, jobs: list[SweptJob]) -> None:
    """Tell ``kind``'s listeners about the jobs a step changed."""
    if jobs and hooks.wants(kind):
        for job in jobs:
            hooks.emit(JobEvent(kind, job.id, job.task, job.queue, job.attempt, job.state,
                                meta=job.meta))
