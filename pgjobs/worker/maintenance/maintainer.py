"""Runs the maintenance steps on a connection of their own, so a slow step never delays a
claim or a heartbeat. A step that fails is logged and tried again at its next interval;
a lost connection is reopened with backoff. Also while every slot is busy or the worker
is quiet: lost jobs come back even when the whole fleet is saturated."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from ...db.connection import TRANSIENT, Connector
from ..config import WorkerConfig
from ..host import Host
from .base import Step
from .expire import Expirer
from .fold import BatchFolder
from .limit_keys import LimitKeyPruner
from .periodic import PeriodicEnqueuer
from .prune import Pruner
from .receipts import ReceiptPruner
from .reclaim import Reclaimer
from .unique_keys import UniqueKeyPruner

log = logging.getLogger("pgjobs.maintenance")


def steps(host: Host, config: WorkerConfig, queues: Sequence[str] | None = None) -> list[Step]:
    """A worker's steps. A burst worker (drain, then exit) enqueues no periodic ticks:
    tests that drain must not find cron jobs appearing under them. Others tick the
    schedules of the ``queues`` they serve (None: all)."""
    queries = host.queries
    reclaim_every = config.reclaim_interval or min(config.lease / 2, 10.0)
    found: list[Step] = [
        Reclaimer(queries, host.config.channel, reclaim_every, config.recovery_budget,
                  host.hooks),
        Expirer(queries, host.hooks),
        UniqueKeyPruner(queries),
        ReceiptPruner(queries),
        LimitKeyPruner(queries),
        Pruner(queries, config.retention),
        # last: a pass folds the deltas of the reclaims and expiries it made
        BatchFolder(queries),
    ]
    if not config.burst:
        found.append(PeriodicEnqueuer(host, queues=queues))
    return found


class Maintenance:
    """Runs ``steps`` when due, on ``connector``'s connection."""

    def __init__(self, connector: Connector, steps: Sequence[Step]) -> None:
        self.connector = connector
        self.steps = list(steps)
        self.wake = asyncio.Event()
        for step in self.steps:
            if isinstance(step, BatchFolder):
                step.poke = self.wake.set

    @property
    def folder(self) -> BatchFolder:
        return next(s for s in self.steps if isinstance(s, BatchFolder))

    async def run_due(self) -> None:
        """One pass: run every step that is due."""
        for step in self.steps:
            if not step.due():
                continue
            try:
                conn = await self.connector.get()
                await step.run_once(conn)
            except TRANSIENT as exc:  # (deadlocks too: they subclass OperationalError)
                step.next_run = 0.0
                await self.connector.backoff(exc)
                return
            except Exception:
                step.again_in(step.interval)
                log.exception("maintenance step %s failed; retrying in %ss", step.name,
                              step.interval)

    async def run(self) -> None:
        if not self.steps:
            return
        while True:
            due = min(step.next_run for step in self.steps)
            self.wake.clear()
            if due > time.monotonic():
                # until the next step is due, or a step asks to run now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), due - time.monotonic())
            await self.run_due()
