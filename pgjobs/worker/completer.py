"""Buffers job outcomes and writes each flush as one fenced statement."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from ..core import failpoints
from ..core.errors import OutcomeRefused
from ..core.outcomes import Outcome, default_backoff, failure
from ..db import leases
from ..db.connection import RETRY_STATEMENT, TRANSIENT, Connector
from ..db.leases import Row, outcome_row, plain_success
from ..db.queries import Queries
from ..db.statement import Query
from .context import JobContext

log = logging.getLogger("pgjobs.worker")


@dataclass(slots=True)
class Pending:
    ctx: JobContext
    outcome: Outcome
    duration: float | None = None
    """Seconds its handler ran (None: handed back unstarted)."""


class Completer:
    """Outcomes wait here until written. Batching is natural: while one flush is in flight
    the next accumulates, so an idle worker writes at once and a busy one in bulk."""

    def __init__(
        self, connector: Connector, queries: Queries, on_written: Callable[[list[Pending]], None],
        max_batch: int = 1000, unknown_task_grace: float | None = 3_600.0,
    ) -> None:
        self.connector = connector
        self.queries = queries
        self.on_written = on_written
        self.max_batch = max_batch
        self.unknown_task_grace = unknown_task_grace
        self.buffer: list[Pending] = []
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.lease_lost = 0

    def submit(self, ctx: JobContext, outcome: Outcome, duration: float | None = None) -> None:
        self.buffer.append(Pending(ctx, outcome, duration))
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
        # A job whose success committed with its effects (current_job().transaction()) is
        # finished: nothing is left to write, whatever the handler did afterwards.
        writes = [(p, row) for p in batch
                  if not p.ctx.committed and (row := outcome_row(p.outcome)) is not None]
        written, retried = await self._write(writes) if writes else (set(), False)
        for p, _row in writes:
            if p.ctx.id not in written and not p.ctx.completed:
                if retried:
                    log.info("outcome %s of job %s was written by the interrupted flush or "
                             "its lease was lost meanwhile", p.outcome.kind, p.ctx.id)
                    continue
                self.lease_lost += 1
                p.ctx.lease_lost_event.set()
                log.warning(
                    "outcome %s of job %s (attempt %s) dropped: its lease was lost "
                    "(the job was reclaimed and may run again elsewhere)",
                    p.outcome.kind, p.ctx.id, p.ctx.attempt,
                )
        self.on_written(batch)

    async def _write(self, writes: list[tuple[Pending, Row]]) -> tuple[set[int], bool]:
        """Write ``writes`` in one statement; return the ids written and whether a
        connection failure made it retry (an earlier try may then have committed)."""
        retried = False
        while True:
            try:
                conn = await self.connector.get()
                failpoints.hit("before_complete_commit")
                return await self._statement(writes).arun(conn), retried
            except RETRY_STATEMENT as exc:  # (before TRANSIENT: they subclass it)
                # Flushes of two workers can lock the same batches in different orders;
                # PostgreSQL aborts one statement (all or nothing), so run it again.
                log.info("outcome flush retried after %s", type(exc).__name__)
                await asyncio.sleep(random.uniform(0.001, 0.02))
            except TRANSIENT as exc:
                retried = True  # the failed try may have committed before the error
                await self.connector.backoff(exc)
            except psycopg.Error as exc:
                # The database refused a row (not the connection): write one by one so
                # that one bad outcome cannot hold back the others.
                if len(writes) == 1:
                    return await self._write_refused(writes[0], exc), retried
                written: set[int] = set()
                for write in writes:
                    found, again = await self._write([write])
                    written |= found
                    retried = retried or again
                return written, retried

    async def _write_refused(self, write: tuple[Pending, Row], exc: psycopg.Error) -> set[int]:
        """Record a failure in place of an outcome the database refused."""
        pending, _ = write
        log.error("job %s: outcome %s refused by the database (%s); recording a failure",
                  pending.ctx.id, pending.outcome.kind, exc)
        refused = OutcomeRefused(f"the job's outcome could not be stored: {exc}")
        row = outcome_row(failure(pending.ctx.job, refused, default_backoff))
        assert row is not None
        try:
            conn = await self.connector.get()
            return await self._statement([(pending, row)]).arun(conn)
        except psycopg.Error as again:
            log.error("job %s: its failure could not be stored either (%s); its lease "
                      "will expire and the job will be recovered", pending.ctx.id, again)
            return set()

    def _statement(self, writes: list[tuple[Pending, Row]]) -> Query[set[int]]:
        # What handlers reported after their last heartbeat goes with their outcome.
        reports = [p.ctx.unwritten()[0] for p, _ in writes]
        reported = any(r != leases.NOTHING_NEW for r in reports)
        # Most flushes are plain successes of jobs without a unique key and with nothing
        # reported since their last heartbeat: a shorter statement, with no holds to
        # lock, no JSON to parse and no per-row CASE.
        if not reported and all(plain_success(row) and not p.ctx.job.unique_hold
                                for p, row in writes):
            return leases.complete_succeeded(
                self.queries, [(p.ctx.id, p.ctx.job.lease_token) for p, _row in writes])
        return leases.complete_many(
            self.queries, [(p.ctx.id, p.ctx.job.lease_token, row) for p, row in writes],
            reports if reported else None, self.unknown_task_grace)

    async def drain(self) -> None:
        """Return once every submitted outcome is written (including a flush in flight)."""
        if not self.idle.is_set():
            self.wake.set()
            await self.idle.wait()
