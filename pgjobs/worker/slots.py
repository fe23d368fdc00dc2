"""The jobs a worker holds: claimed ahead of a free slot (``ready``), running (one asyncio
task each), and every lease it holds until the job's outcome is written (``leases``).

Jobs are keyed by lease token: a job this worker lost and claimed again is two attempts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from typing import Any

from ..core import failpoints
from ..core.hooks import OUTCOME_EVENT, STATE_AFTER, EventKind, Hooks, JobEvent
from ..core.outcomes import RELEASED, Outcome, default_backoff, failure
from ..core.types import ClaimedJob
from ..db.queries import Queries
from .completer import Completer, Pending
from .context import JobContext
from .executor import Executor
from .host import Handler
from .isolated import IsolatedRunner, isolable
from .summary import OUTCOME_LEVEL, Summary, job_line
from .txpool import TransactionPools

log = logging.getLogger("pgjobs.worker")


class Slots:
    """Starts claimed jobs as slots free, and hands each outcome to the completer."""

    def __init__(self, concurrency: int, executor: Executor, completer: Completer,
                 queries: Queries, tasks: Mapping[str, Handler], summary: Summary,
                 on_finished: Callable[[], None], on_ran: Callable[[float], None],
                 hooks: Hooks, pools: TransactionPools | None = None,
                 isolated: IsolatedRunner | None = None) -> None:
        self.concurrency = concurrency
        self.executor = executor
        self.completer = completer
        self.queries = queries
        self.tasks = tasks
        self.summary = summary
        self.on_finished = on_finished
        self.on_ran = on_ran
        self.pools = pools
        self.isolated = isolated
        """Runs suspects (recovered jobs) in processes of their own; None: here, one at a
        time (the claim gives this worker no second one)."""
        self.running: dict[Any, tuple[JobContext, asyncio.Task[None]]] = {}
        self.ready: deque[JobContext] = deque()
        self.leases: dict[Any, JobContext] = {}
        self.stats: Counter[str] = Counter()
        self.stopping = False
        self.hooks = hooks
        self.probes = hooks.probes
        self.worker_id: int | None = None

    @property
    def held(self) -> int:
        """Jobs running or claimed ahead."""
        return len(self.running) + len(self.ready)

    def accept(self, jobs: list[ClaimedJob]) -> None:
        """Lease (heartbeat) every claimed job at once; start as many as slots allow."""
        claimed = {job.id for job in jobs}
        for stale, _ in list(self.running.values()):
            if stale.id in claimed:  # our earlier attempt lost its lease and was reclaimed
                self.lease_lost(stale)
        for stale in self.ready:
            if stale.id in claimed:
                self.lease_lost(stale)
        for job in jobs:
            ctx = JobContext(job, self.queries, pools=self.pools)
            if self.stopping:
                ctx.shutting_down = True
            self.leases[job.lease_token] = ctx
            self.ready.append(ctx)
        self.fill()

    def release(self, jobs: list[ClaimedJob]) -> None:
        """Hand claimed jobs back unstarted (available again, attempt refunded)."""
        for job in jobs:
            self.completer.submit(JobContext(job, self.queries), Outcome(RELEASED))

    def fill(self) -> None:
        while self.ready and len(self.running) < self.concurrency:
            ctx = self.ready.popleft()
            if ctx.lease_lost:  # reclaimed while it waited: another attempt owns it
                self.leases.pop(ctx.job.lease_token, None)
                continue
            task = asyncio.create_task(self._run(ctx))
            self.running[ctx.job.lease_token] = (ctx, task)

    async def _run(self, ctx: JobContext) -> None:
        if "started" in self.hooks.listeners:
            self.report(ctx, "started")
        started = time.perf_counter()
        try:
            outcome = await self.execute(ctx)
        except BaseException as exc:
            outcome = failure(ctx.job, exc, default_backoff)
            log.exception("job %s: internal error, recorded as a failure", ctx.id)
        failpoints.hit("after_handler")
        self.running.pop(ctx.job.lease_token, None)
        ran = time.perf_counter() - started
        self.completer.submit(ctx, outcome, ran)
        self.stats[outcome.kind] += 1
        self.on_ran(ran)
        job_line(OUTCOME_LEVEL.get(outcome.kind, logging.DEBUG), ctx, outcome.kind, ran,
                 self.worker_id)
        self.summary.count(outcome.kind, self.held)
        self.on_finished()

    async def execute(self, ctx: JobContext) -> Outcome:
        """A suspect in a process of its own when the worker isolates them, else here."""
        job = ctx.job
        if self.isolated is None or not isolable(job) or job.task not in self.tasks:
            return await self.executor.execute(job, ctx)
        try:
            return await self.isolated.run(job, ctx)
        except asyncio.CancelledError:  # lease lost, or interrupted by shutdown
            return self.executor.interrupted(job, ctx)

    def written(self, batch: list[Pending]) -> None:
        """The completer wrote these outcomes: their leases are no longer held."""
        for pending in batch:
            self.leases.pop(pending.ctx.job.lease_token, None)
        failpoints.hit("after_complete_commit")
        if self.hooks.listeners:
            for pending in batch:
                if pending.duration is not None:  # started (else: handed back unstarted)
                    lost = pending.ctx.lease_lost and not pending.ctx.completed
                    kind = "lease_lost" if lost else OUTCOME_EVENT[pending.outcome.kind]
                    state = "dead" if pending.outcome.dead else None  # a crash past budget
                    self.report(pending.ctx, kind, pending.duration, pending.outcome.error,
                                state)

    def report(self, ctx: JobContext, kind: EventKind, duration: float | None = None,
               error: Mapping[str, Any] | None = None, state: str | None = None) -> None:
        """Tell ``kind``'s listeners, if any, about ``ctx``'s job (``state``: the state
        after it, when the kind alone does not say)."""
        if self.hooks.wants(kind):
            job = ctx.job
            self.hooks.emit(JobEvent(kind, job.id, job.task, job.queue, job.attempt,
                                     state or STATE_AFTER[kind], duration, error, job.meta,
                                     self.worker_id))

    def occupancy(self) -> None:
        """Tell the probes how many handlers run and how many slots are free. Sampled
        (at start, at each claim and each heartbeat), not sent at every change: two
        calls per job would cost more than the gauge they feed is worth."""
        running = len(self.running)
        for probe in self.probes:
            probe.occupancy(running, max(0, self.concurrency - running))

    def lease_lost(self, ctx: JobContext) -> None:
        """Another attempt may own the job now: stop this one (an async handler is
        cancelled; a sync one sees ``should_stop``), and drop its outcome."""
        if ctx.lease_lost:
            return
        log.warning("job %s lost its lease (attempt %s): stopping it", ctx.id, ctx.attempt)
        ctx.lease_lost_event.set()
        ctx.stop_event.set()
        entry = self.running.get(ctx.job.lease_token)
        task = self.tasks.get(ctx.task)
        if entry is not None and task is not None and task.is_async:
            entry[1].cancel()

    def renewable(self) -> list[JobContext]:
        """Held leases to renew: every one not known to be lost."""
        return [c for c in self.leases.values() if not c.lease_lost]

    def unfinished(self) -> list[JobContext]:
        """Held leases whose outcome is not yet settled (for heartbeats and the watchdog)."""
        return [c for c in self.leases.values() if not c.completed and not c.lease_lost]

    def begin_shutdown(self) -> None:
        """Running jobs see ``shutting_down``; jobs accepted from now on too."""
        if not self.stopping:
            for ctx, _ in self.running.values():
                ctx.shutting_down = True
        self.stopping = True

    def release_ready(self) -> None:
        """Jobs claimed ahead and never started: available again, attempt refunded."""
        while self.ready:
            ctx = self.ready.popleft()
            if not ctx.lease_lost:
                self.completer.submit(ctx, Outcome(RELEASED))
                self.stats[RELEASED] += 1

    async def finish(self, grace: float, cut_short: asyncio.Event) -> None:
        """Give running jobs ``grace`` seconds (or until ``cut_short``), then interrupt the
        rest: they are released, to run again."""
        tasks = [task for _, task in self.running.values()]
        if tasks and grace > 0:
            log.info("waiting up to %ss for %d running job(s)", grace, len(tasks))
            interrupted = asyncio.create_task(cut_short.wait())
            everything = asyncio.ensure_future(asyncio.wait(tasks))
            await asyncio.wait([everything, interrupted], timeout=grace,
                               return_when=asyncio.FIRST_COMPLETED)
            interrupted.cancel()
            everything.cancel()
        if self.running:
            log.warning("interrupting %d job(s) after the shutdown timeout; they are "
                        "released to run again", len(self.running))
            for ctx, task in list(self.running.values()):
                ctx.stop_event.set()
                task.cancel()
            left = [t for _, t in self.running.values()]
            if left:
                await asyncio.wait(left, timeout=5)
