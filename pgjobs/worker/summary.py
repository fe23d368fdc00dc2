"""The worker's log of outcomes: one line per job at DEBUG (routine) or higher (retries,
deaths), and an INFO summary every ``summary_interval`` seconds."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from ..core.outcomes import CRASHED, DEAD, RETRY
from .context import JobContext

log = logging.getLogger("pgjobs.worker")

# One line per job costs about as much as running a no-op job, so routine outcomes are
# DEBUG and a summary line reports them (``WorkerConfig.summary_interval``).
OUTCOME_LEVEL = {RETRY: logging.INFO, DEAD: logging.WARNING, CRASHED: logging.WARNING}


class Summary:
    """Counts outcomes and logs them every ``interval`` seconds, at the first outcome due."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.counts: Counter[str] = Counter()
        self.since = clock()

    def count(self, kind: str, held: int) -> None:
        self.counts[kind] += 1
        if not self.interval:
            return
        now = self.clock()
        if now - self.since >= self.interval:
            self.flush(now, held)

    def flush(self, now: float, held: int) -> None:
        if self.counts:
            total = sum(self.counts.values())
            kinds = " ".join(f"{kind}={n}" for kind, n in sorted(self.counts.items()))
            log.info("%d job(s) in %.0f s (%.1f/s): %s; running or held %d",
                     total, now - self.since, total / (now - self.since), kinds, held)
        self.counts.clear()
        self.since = now


def job_line(level: int, ctx: JobContext, kind: str, seconds: float,
             worker_id: int | None) -> None:
    """One job's outcome, when ``level`` is enabled. Its fields also go in the record
    (``record.job``), for structured formatters (``--log-format json``)."""
    if log.isEnabledFor(level):
        duration_ms = round(seconds * 1000, 2)
        fields = {"job_id": ctx.id, "task": ctx.task, "queue": ctx.queue,
                  "attempt": ctx.attempt, "outcome": kind, "duration_ms": duration_ms,
                  "worker_id": worker_id}
        log.log(level, "job id=%s task=%s queue=%s attempt=%s outcome=%s duration_ms=%s",
                ctx.id, ctx.task, ctx.queue, ctx.attempt, kind, duration_ms,
                extra={"job": fields})
