"""The claim loop: claim when slots are free (or held jobs run low), sleep until woken by
a notification, a finished job or a stop, or until the next poll."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from psycopg import sql

from ..core import failpoints
from ..core.types import ClaimedJob
from ..db import claim
from ..db.connection import TRANSIENT, Connector
from ..db.queries import Queries
from .config import WorkerConfig
from .routing import ClaimRouter
from .slots import Slots

log = logging.getLogger("pgjobs.worker")


class ClaimAhead:
    """How many jobs to claim beyond the free slots.

    A slot that frees while a claim is in flight stays idle for the rest of the round
    trip. That matters only for jobs shorter than a claim: then the worker holds about as
    many jobs as its slots finish during one claim (``concurrency * claim time / job
    time``), capped at ``limit``. Jobs longer than a claim round trip get no claim-ahead,
    so a slow job never waits in this worker while another worker is idle.
    """

    def __init__(self, concurrency: int, limit: int) -> None:
        self.concurrency = concurrency
        self.limit = limit
        self.claim_seconds = 0.0  # moving averages; 0 until measured
        self.job_seconds = 0.0

    def claimed(self, seconds: float) -> None:
        self.claim_seconds += (seconds - self.claim_seconds) * (0.2 if self.claim_seconds else 1)

    def ran(self, seconds: float) -> None:
        self.job_seconds += (seconds - self.job_seconds) * (0.05 if self.job_seconds else 1)

    def depth(self) -> int:
        if not self.limit or not self.claim_seconds or not self.job_seconds:
            return 0
        slots_freed = self.concurrency * self.claim_seconds / self.job_seconds
        return min(self.limit, int(slots_freed))


class Claimer:
    """Claims jobs for ``slots`` on its own connection until stopped (or, in burst mode,
    until no due job is left and nothing is held)."""

    def __init__(self, config: WorkerConfig, queries: Queries, queues: list[str],
                 connector: Connector, router: ClaimRouter, slots: Slots,
                 ahead: ClaimAhead,
                 settle: Callable[[Any], Awaitable[None]] | None = None) -> None:
        self.config = config
        self.queries = queries
        self.queues = queues
        self.connector = connector
        self.router = router
        self.slots = slots
        self.ahead = ahead
        self.settle = settle
        self.lease = timedelta(seconds=config.lease)
        self.wake = asyncio.Event()
        self.worker_id: int | None = None
        self.stopping = False
        self.quieted = False
        self.claimed_limited = False  # whether the last claim sent job_claim_limited

    def poke(self) -> None:
        """Wake the loop: a notification, a finished job, a stop."""
        self.wake.set()

    async def run(self) -> None:
        wake, slots, config = self.wake, self.slots, self.config
        while not self.stopping:
            slots.fill()
            depth = self.ahead.depth()
            want = config.concurrency + depth - slots.held
            # Claim when a slot is free and nothing is held, or when the held jobs run low:
            # one claim of many rather than a round trip per finished job.
            if self.quieted or want <= 0 or len(slots.ready) > depth // 2:
                wake.clear()
                await self.idle(None if self.quieted else config.poll_interval)
                continue
            wake.clear()  # before claiming: a notification during the claim re-runs it
            jobs = await self.claim(want)
            if jobs is None:
                continue
            slots.accept(jobs)
            if len(jobs) >= want or (jobs and self.claimed_limited):
                # More may be due (a limited claim stops short of `want` at key limits).
                # The jobs just accepted start first: the loop yields before it claims.
                await asyncio.sleep(0)
                continue
            # Every job due is claimed: the router's periodic work, then maybe its sweep.
            swept = await self.claim(want - len(jobs), sweep=True)
            if swept is None:
                continue  # the connection failed (and was backed off): claim again
            if swept:
                slots.accept(swept)
                continue
            if jobs:
                # Claim again when woken (a notification, a finished job, a stop) or at
                # the next poll.
                await self.idle(config.poll_interval)
                continue
            if config.burst and not slots.held:
                await slots.completer.drain()  # retries written as due may be claimable
                if self.settle is not None:  # and callbacks of batches they finished
                    try:
                        await self.settle(await self.connector.get())
                    except TRANSIENT as exc:
                        await self.connector.backoff(exc)
                        continue
                jobs = await self.claim(want)
                if not jobs:
                    return
                slots.accept(jobs)
                continue
            await self.idle(config.poll_interval)

    async def idle(self, timeout: float | None) -> bool:
        """Wait for a wake-up (True) or ``timeout`` (False). Reclaims run on the
        maintenance connection meanwhile and notify the queues of the jobs they make
        available, so a reclaimed job wakes this loop like a new one."""
        if self.wake.is_set():
            return True
        try:
            await asyncio.wait_for(self.wake.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def claim(self, limit: int, sweep: bool = False) -> list[ClaimedJob] | None:
        """Claim up to ``limit`` jobs (None after a connection failure). With ``sweep``,
        only when the router has periodic work due (else [])."""
        try:
            conn = await self.connector.get()
            if sweep:
                chosen = await self.router.when_idle(conn)
                if chosen is None or limit <= 0:
                    return []
                statement: sql.SQL | sql.Composed = chosen
            else:
                statement = await self.router.statement(conn)
            self.claimed_limited = statement is not self.queries.job_claim
            failpoints.hit("before_claim")
            sent = time.monotonic()
            query = claim.claim(self.queries, statement, self.queues, limit, self.lease,
                                self.worker_id)
            jobs = await query.arun(conn)
            took = time.monotonic() - sent
            self.ahead.claimed(took)
            if self.slots.probes:
                for probe in self.slots.probes:
                    probe.claimed(len(jobs), took)
                self.slots.occupancy()
        except TRANSIENT as exc:
            await self.connector.backoff(exc)
            return None
        failpoints.hit("after_claim_commit")
        if jobs and time.monotonic() - sent > self.config.lease:
            # The reply took longer than the lease it granted (a partition, a stall): the
            # jobs may be reclaimed and running elsewhere by now. Hand them back rather
            # than start them; the write is fenced, so it is a no-op where they moved on.
            log.warning("claim of %d job(s) answered after %.1f s, longer than the lease; "
                        "releasing them unstarted", len(jobs), time.monotonic() - sent)
            self.slots.release(jobs)
            return []
        return jobs
