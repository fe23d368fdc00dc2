"""Keeping held leases alive: a heartbeat renews all of them in one statement every
lease/3, on a connection of its own; a watchdog stops every held job once no heartbeat
has been answered for a whole lease (another worker may have reclaimed them by then)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import timedelta

from ..db import leases
from ..db.connection import TRANSIENT, Connector
from ..db.leases import NOTHING_NEW
from ..db.queries import Queries
from .slots import Slots

log = logging.getLogger("pgjobs.worker")


class Heartbeat:
    """Renews the leases ``slots`` holds, and tells it which ones were lost."""

    def __init__(self, connector: Connector, queries: Queries, slots: Slots, lease: float,
                 worker_id: Callable[[], int | None]) -> None:
        self.connector = connector
        self.queries = queries
        self.slots = slots
        self.lease = lease
        self.worker_id = worker_id
        self._watchdog: asyncio.TimerHandle | None = None

    async def run(self) -> None:
        interval = self.lease / 3
        lease = timedelta(seconds=self.lease)
        renewed_at = time.monotonic()
        self.arm(renewed_at)
        while True:
            await asyncio.sleep(interval)
            held = self.slots.renewable()
            unwritten = [ctx.unwritten() for ctx in held]  # progress and checkpoints
            reports = [r for r, _ in unwritten]
            query = leases.heartbeat(self.queries, [c.id for c in held],
                                     [c.job.lease_token for c in held], lease, self.worker_id(),
                                     reports if any(r != NOTHING_NEW for r in reports) else None)
            sent = time.monotonic()
            timeout = max(interval, renewed_at + self.lease - sent)
            try:
                # A black-holed link hangs instead of failing: bound each beat, so that a
                # stuck connection is replaced instead of waited on until TCP gives up.
                async with asyncio.timeout(timeout):
                    conn = await self.connector.get()
                    answered = await query.arun(conn)  # renewed, or busy (locked by its tx)
            except TimeoutError:
                self.failed(len(held))
                await self.connector.backoff(TimeoutError(f"no reply within {timeout:.1f} s"))
                continue
            except TRANSIENT as exc:
                self.failed(len(held))
                await self.connector.backoff(exc)
                continue
            renewed_at = sent
            self.arm(sent)
            for ctx, (_, versions) in zip(held, unwritten, strict=True):
                if answered.get(ctx.job.lease_token):  # renewed: its reports were written
                    ctx.written(versions)
            if self.slots.probes:
                self.slots.occupancy()
            lost = [ctx for ctx in held if ctx.job.lease_token not in answered
                    and ctx.job.lease_token in self.slots.leases and not ctx.completed]
            for ctx in lost:
                self.slots.lease_lost(ctx)
            self.failed(len(lost))

    def failed(self, leases: int) -> None:
        """``leases`` were not renewed (for the probes; a lease lost is logged apart)."""
        if leases:
            for probe in self.slots.probes:
                probe.renewals_failed(leases)

    def arm(self, renewed_at: float) -> None:
        """Stop every held job ``lease`` seconds after the last heartbeat that was sent
        and answered. A timer, so neither a heartbeat stuck in a partition nor a paused
        process can postpone it."""
        self.cancel()
        delay = renewed_at + self.lease - time.monotonic()
        self._watchdog = asyncio.get_running_loop().call_later(delay, self._lapsed)

    def cancel(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()

    def _lapsed(self) -> None:
        held = self.slots.unfinished()
        if held:
            log.warning("no heartbeat answered for %ss: this worker's leases have lapsed",
                        self.lease)
        for ctx in held:
            self.slots.lease_lost(ctx)
