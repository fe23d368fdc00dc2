"""The worker: claims jobs in batches, runs them, and keeps their leases alive.

One asyncio loop per process with five connections, one per role, so no role ever waits
for another's query:

    claim        the claim loop (``claimer``; K = free slots plus claim-ahead)
    complete     the completer's batched, fenced outcome writes (``completer``)
    heartbeat    lease renewal for every held job, every lease/3 (``leases``)
    listen       LISTEN for enqueue notifications (``listener``); polling covers any gap
    maintenance  reclaim, expire, prune, periodic ticks (``maintenance``)

This module wires them together and owns the life of the process: start-up checks,
registration, signals (stop, quiet) and the shutdown sequence.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar, cast

from psycopg.types.json import set_json_loads

from ..core.args import lenient_json_loads
from ..core.errors import SchemaNotReady, WorkerStopped
from ..core.version import HEAD_REVISION, __version__
from ..db import schema, workers
from ..db.connection import TRANSIENT, Connector
from .claimer import ClaimAhead, Claimer
from .completer import Completer, Pending
from .config import WorkerConfig
from .context import JobContext
from .executor import Executor
from .host import Host
from .isolated import IsolatedRunner
from .leases import Heartbeat
from .listener import listen
from .maintenance.maintainer import Maintenance, steps
from .routing import ClaimRouter
from .slots import Slots
from .summary import Summary
from .txpool import TransactionPools

log = logging.getLogger("pgjobs.worker")
T = TypeVar("T")

UNKNOWN_TASK_DELAY = 5.0
"""Seconds a job of a task this worker lacks waits before it is due again (about, and at
most, before the rounding of :func:`unknown_task_delay`)."""


class Worker:
    """Runs jobs of ``app`` until stopped (or, in burst mode, until none is due).

    ``app_spec`` (``pkg.module:app``, as ``--app``): where a child process finds the app
    to run a suspect in isolation (``WorkerConfig.isolate_suspects``); without it the
    worker runs suspects one at a time, in its own process."""

    def __init__(self, app: Host, config: WorkerConfig | None = None,
                 app_spec: str | None = None) -> None:
        self.app = app
        self.config = config = config or WorkerConfig()
        self.queues = list(config.queues or sorted(
            {t.opts.queue for t in app.tasks.values()}
            | {s.task.opts.queue for s in app.schedules.values()} | {"default"}))
        queries = self.queries = app.queries
        prepare = app.config.prepare_threshold is not None

        def dsn() -> str:  # read when the first connection is made, not before
            return app.dsn

        self.dbs = {role: Connector(dsn, role, prepare) for role in
                    ("heartbeat", "complete", "maintenance")}
        self.dbs["claim"] = Connector(dsn, "claim", prepare, configure=_lenient_json,
                                      generic_plans=True)
        self.summary = Summary(config.summary_interval)
        self.ahead = ClaimAhead(config.concurrency, config.prefetch)
        isolated = None
        if app_spec is not None and config.isolate_suspects:
            isolated = IsolatedRunner(app_spec, lambda: replace(cast(Any, app.config), dsn=app.dsn),
                                      config.recovery_budget)
        grace = config.unknown_task_grace_seconds
        self.executor = Executor(app.tasks, threads=config.concurrency, hooks=app.hooks,
                                 unknown_task_delay=unknown_task_delay(
                                     grace, config.poll_interval))
        self.completer = Completer(self.dbs["complete"], queries, self._written,
                                   unknown_task_grace=grace)
        self.pools = TransactionPools(dsn, config.concurrency, app.config.prepare_threshold)
        self.slots = Slots(config.concurrency, self.executor, self.completer, queries,
                           app.tasks, self.summary, self._poke, self.ahead.ran, app.hooks,
                           self.pools, isolated)
        keyed = any(t.limit is not None and t.opts.queue in self.queues
                    for t in app.tasks.values())
        router = ClaimRouter(queries, self.queues, keyed=keyed)
        self.claimer = Claimer(config, queries, self.queues, self.dbs["claim"], router,
                               self.slots, self.ahead, settle=self._settle)
        self.heartbeat = Heartbeat(self.dbs["heartbeat"], queries, self.slots, config.lease,
                                   lambda: self.worker_id)
        self.maintenance = Maintenance(self.dbs["maintenance"], steps(app, config, self.queues))
        self.worker_id: int | None = None
        self.shutdown_timeout = config.shutdown_timeout
        self._immediately = asyncio.Event()

    @property
    def stats(self) -> Counter[str]:
        """Outcomes so far, by kind."""
        return self.slots.stats

    @property
    def stopping(self) -> bool:
        return self.claimer.stopping

    @property
    def ready(self) -> deque[JobContext]:
        """Jobs claimed ahead of a free slot."""
        return self.slots.ready

    @property
    def running(self) -> dict[Any, tuple[JobContext, asyncio.Task[None]]]:
        """Jobs running now, by lease token."""
        return self.slots.running

    # -- control (signal handlers call these) ------------------------------------------

    def stop(self, immediately: bool = False) -> None:
        """Stop claiming and shut down; running jobs get ``shutdown_timeout`` to finish."""
        if self.stopping and not immediately:
            return
        if immediately:
            self.shutdown_timeout = 0
            self._immediately.set()
        self.slots.begin_shutdown()
        self.claimer.stopping = True
        self._poke()

    def quiet(self) -> None:
        """Stop claiming; keep running what was claimed (SIGTSTP)."""
        if not self.claimer.quieted:
            self.claimer.quieted = True
            log.info("worker %s quiet: no new claims", self.worker_id)
            asyncio.get_running_loop().create_task(self._set_state("quiet"))

    def _poke(self) -> None:
        self.claimer.poke()

    def _written(self, batch: list[Pending]) -> None:
        self.slots.written(batch)
        if any(p.ctx.job.recoveries for p in batch):
            # The claim takes no suspect while this worker runs one, and sees it running
            # until its outcome is written: claim now, not at the next poll, so recovered
            # jobs do not wait a poll interval each.
            self._poke()
        # Their batches' counters changed: fold them, so callbacks fire promptly.
        ids = {p.ctx.job.batch_id for p in batch if p.ctx.job.batch_id is not None}
        if ids:
            self.maintenance.folder.request(ids)

    async def _settle(self, conn: Any) -> None:
        """Before a burst worker decides nothing is left: fold the batches of the jobs it
        finished, so the callbacks they make due are there to claim."""
        await self.maintenance.folder.settle(conn)

    # -- main --------------------------------------------------------------------------

    async def run(self) -> Counter[str]:
        """Run until stopped; return the count of outcomes by kind."""
        try:
            await self._check_schema()
            self.worker_id = self.claimer.worker_id = self.slots.worker_id = (
                await self._register())
        except WorkerStopped as exc:
            log.warning("pgjobs worker: %s", exc)
            await self._close()
            return self.stats
        except BaseException:
            await self._close()
            raise
        config = self.config
        log.info(
            "pgjobs worker %s started: queues=%s concurrency=%s lease=%ss burst=%s pid=%s",
            self.worker_id, ",".join(self.queues), config.concurrency, config.lease,
            config.burst, os.getpid(), extra={"worker_id": self.worker_id},
        )
        if self.slots.probes:
            self.slots.occupancy()
        # One pass before the first claim: lost jobs come back and expired ones end
        # before anything is claimed (and burst runs see a settled queue).
        await self.maintenance.run_due()
        background = [
            asyncio.create_task(self.completer.run(), name="pgjobs-completer"),
            asyncio.create_task(self.heartbeat.run(), name="pgjobs-heartbeat"),
            asyncio.create_task(self.maintenance.run(), name="pgjobs-maintenance"),
        ]
        listen_dsn = self.app.listen_dsn
        if config.listen and listen_dsn is not None:
            background.append(asyncio.create_task(
                listen(listen_dsn, self.app.config.channel, frozenset(self.queues),
                       self._poke), name="pgjobs-listen"))
        elif config.listen:
            log.info("no LISTEN: the DSN goes through PgBouncer and no listen DSN is set; "
                     "polling every %ss", config.poll_interval)
        try:
            await self.claimer.run()
        finally:
            await self._shutdown(background)
        return self.stats

    async def _connected(self, action: Callable[[Any], Awaitable[T]]) -> T:
        """``action`` on the claim connection, retried with backoff while the database
        cannot be reached (unless a stop is requested meanwhile)."""
        db = self.dbs["claim"]
        while True:
            try:
                return await action(await db.get())
            except TRANSIENT as exc:
                if self.stopping:
                    raise WorkerStopped("stopped before the database could be reached") from exc
                await db.backoff(exc)

    async def _check_schema(self) -> None:
        """Refuse to run against a schema older (or newer) than this code."""
        found = await self._connected(lambda conn: schema.arevision(conn, self.queries))
        if found != HEAD_REVISION:
            raise SchemaNotReady(self.queries.schema, "missing" if found is None
                                 else f"at revision {found}, not {HEAD_REVISION}")

    async def _register(self) -> int:
        """Register this worker, and its tasks in the registry (what pgjobs.enqueue() in
        SQL reads, and how other workers tell a task nobody runs from one in a deploy)."""
        tasks = [t for t in self.app.tasks.values() if t.fn is not None]
        query = workers.register(self.queries, socket.gethostname(), os.getpid(), self.queues,
                                 self.config.concurrency, __version__, self.config.lease,
                                 [t.name for t in tasks],
                                 isolates=self.slots.isolated is not None)
        if tasks:
            await self._connected(workers.register_tasks(self.queries, tasks).arun)
        return await self._connected(query.arun)

    # -- shutdown ----------------------------------------------------------------------

    async def _shutdown(self, background: list[asyncio.Task[Any]]) -> None:
        if not self.config.burst or self.slots.running:
            await self._set_state("stopping")
        self.slots.release_ready()
        await self.slots.finish(self.shutdown_timeout, self._immediately)
        await self.completer.drain()
        await self._set_state("stopped")
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await self._close()
        self.summary.flush(self.summary.clock(), 0)
        log.info("pgjobs worker %s stopped: %s", self.worker_id, dict(self.stats),
                 extra={"worker_id": self.worker_id})

    async def _close(self) -> None:
        self.heartbeat.cancel()
        for db in self.dbs.values():
            await db.close()
        self.executor.shutdown()
        await self.pools.close()

    async def _set_state(self, state: str) -> None:
        try:
            conn = await self.dbs["heartbeat"].get()
            await workers.set_state(self.queries, self.worker_id, state).arun(conn)
        except TRANSIENT as exc:
            log.warning("could not record worker state %s: %s", state, exc)


def unknown_task_delay(grace: float | None, poll_interval: float) -> float:
    """Seconds before a job of a task this worker lacks is due again: about a fraction of
    the grace (at most UNKNOWN_TASK_DELAY), so that a job nobody can run ends soon after
    its grace, rounded to a whole number of this worker's poll intervals plus a tenth.

    The job is claimed by whichever worker polls first once it is due. This worker
    claimed it at one of its polls and hands it back a moment later, so a delay of whole
    poll intervals (plus a little) makes it due just after this worker's own poll: any
    other worker then has most of a poll interval to claim it first. A delay that ended
    just before this worker's next poll instead gave it back to this worker every time,
    and a worker that has the task, polling at the same rate, could wait for ever (seen
    with a grace of 2 s: a delay of 0.5 s and polls every second)."""
    wanted = UNKNOWN_TASK_DELAY if grace is None else min(UNKNOWN_TASK_DELAY, grace / 4)
    if poll_interval <= 0:
        return wanted
    return max(1, round(wanted / poll_interval)) * poll_interval + poll_interval / 10


def _lenient_json(conn: Any) -> None:
    set_json_loads(lenient_json_loads, conn)
