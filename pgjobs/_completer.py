"""Buffers job outcomes and writes each flush as one fenced statement."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from ._db import RETRY_STATEMENT, TRANSIENT, Connector
from ._executor import Outcome, outcome_row, outcomes_param
from ._job import JobContext
from ._queries import Queries

log = logging.getLogger("pgjobs.worker")


@dataclass(slots=True)
class Pending:
    ctx: JobContext
    outcome: Outcome


class Completer:
    """Outcomes wait here until written. Batching is natural: while one flush is in flight
    the next accumulates, so an idle worker writes at once and a busy one in bulk."""

    def __init__(
        self, connector: Connector, queries: Queries, on_written: Callable[[list[Pending]], None],
        max_batch: int = 1000,
    ) -> None:
        self.connector = connector
        self.queries = queries
        self.on_written = on_written
        self.max_batch = max_batch
        self.buffer: list[Pending] = []
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.lease_lost = 0

    def submit(self, ctx: JobContext, outcome: Outcome) -> None:
        self.buffer.append(Pending(ctx, outcome))
        self.idle.clear()
        self.wake.set()

    async def run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            await asyncio.sleep(0)  # let jobs finishing in this loop turn join the flush
            while self.buffer:
                await self.flush()
            self.idle.set()

    async def flush(self) -> None:
        batch, self.buffer = self.buffer[: self.max_batch], self.buffer[self.max_batch :]
        rows = [(p, outcome_row(p.outcome)) for p in batch]
        writes = [(p, row) for p, row in rows if row is not None]
        written: set[int] = set()
        if writes:
            params = outcomes_param([(p.ctx.id, p.ctx.job.lease_token, r) for p, r in writes])
            while True:
                try:
                    conn = await self.connector.get()
                    cursor = await conn.execute(self.queries.job_complete_many, params)
                    written = {row[0] for row in await cursor.fetchall()}
                    break
                except RETRY_STATEMENT as exc:  # (before TRANSIENT: they subclass it)
                    # Flushes of two workers can lock the same batches in different orders;
                    # PostgreSQL aborts one statement (all or nothing), so run it again.
                    log.info("outcome flush retried after %s", type(exc).__name__)
                    await asyncio.sleep(random.uniform(0.001, 0.02))
                except TRANSIENT as exc:
                    await self.connector.backoff(exc)
        for p, _row in writes:
            if p.ctx.id not in written and not p.ctx.completed:
                self.lease_lost += 1
                p.ctx.lease_lost_event.set()
                log.warning(
                    "outcome %s of job %s (attempt %s) dropped: its lease was lost "
                    "(the job was reclaimed and may run again elsewhere)",
                    p.outcome.kind, p.ctx.id, p.ctx.attempt,
                )
        self.on_written(batch)

    async def drain(self) -> None:
        """Return once every submitted outcome is written (including a flush in flight)."""
        if not self.idle.is_set():
            self.wake.set()
            await self.idle.wait()
