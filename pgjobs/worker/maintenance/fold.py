"""Fold batches: move the counters' deltas into their batch rows and fire the events they
make due (``batch_fold``, revision 0007).

A worker asks for the batches of the jobs whose outcomes it has just written
(:meth:`BatchFolder.request`), so a batch's callbacks fire within a fold of its last
job's commit; a batch whose row another transaction holds is skipped by the database and
asked again a moment later. Once a second, with nothing asked, the step sweeps every
batch with deltas left: changes made by hand-written SQL, reclaims and expiries, and
those of a worker that died between a commit and its fold.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from ...db import batches
from ...db.queries import Queries
from .base import AnyAsyncConnection, Step

RETRY = 0.02
"""Seconds before a skipped batch is folded again."""
SPACING = 0.05
"""Least seconds between two folds asked for by one worker: under a steady stream of
outcomes one fold covers many flushes (each fold locks the batch row for a moment), and a
callback waits at most this much longer."""


class BatchFolder(Step):
    name = "fold batches"

    def __init__(self, queries: Queries, interval: float = 1.0, limit: int = 100) -> None:
        super().__init__(interval)
        self.queries = queries
        self.limit = limit
        self.wanted: set[int] = set()
        self.asked: set[int] = set()
        self.last_fold = 0.0
        """Every batch asked for since the last :meth:`settle`."""
        self.poke: Callable[[], None] = lambda: None
        """Set by the runner: wakes it to run this step now."""

    def request(self, ids: Iterable[int]) -> None:
        """Fold these batches as soon as possible."""
        before = len(self.wanted)
        self.wanted.update(ids)
        self.asked.update(ids)
        if len(self.wanted) > before:
            soonest = self.last_fold + SPACING
            if self.next_run > soonest:
                self.next_run = soonest
                self.poke()

    async def step(self, conn: AnyAsyncConnection) -> list[int]:
        """Fold the batches asked for, or sweep; returns the ids folded."""
        if self.wanted:
            ids = sorted(self.wanted)
            self.wanted.clear()
        else:
            ids = await batches.unfolded(self.queries, self.limit).arun(conn)
        if not ids:
            return []
        self.last_fold = time.monotonic()
        skipped = await batches.fold(self.queries, ids).arun(conn)
        if skipped:
            self.wanted.update(skipped)
            self.again_in(RETRY)
        return [i for i in ids if i not in set(skipped)]

    async def settle(self, conn: AnyAsyncConnection, patience: float = 2.0) -> None:
        """Fold, on ``conn``, every batch asked for since the last call and every batch
        with deltas left (a burst worker, before it decides nothing is left). A batch
        this step is folding at the same time is skipped by the database until that fold
        commits, so this also waits for it; skipped batches are retried for up to
        ``patience`` seconds."""
        deadline = time.monotonic() + patience
        todo, self.asked = self.asked | self.wanted, set()
        # and every batch with deltas left (an expiry, a reclaim, hand-written SQL)
        todo.update(await batches.unfolded(self.queries, self.limit).arun(conn))
        while todo:
            skipped = await batches.fold(self.queries, sorted(todo)).arun(conn)
            todo = set(skipped)
            if not todo or time.monotonic() > deadline:
                self.wanted.update(todo)
                return
            await asyncio.sleep(RETRY)
