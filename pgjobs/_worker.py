"""The worker: claims jobs in batches, runs them, and keeps their leases alive.

One asyncio loop per process with four connections, one per role, so no role ever waits
for another's query:

    claim     claim loop (K = free slots) and the reclaim maintenance step
    complete  the completer's batched, fenced outcome writes
    heartbeat lease renewal for every held job, every lease/3
    listen    LISTEN for enqueue notifications; polling covers any gap
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.types.json import set_json_loads

from . import _failpoints
from ._completer import Completer, Pending
from ._db import TRANSIENT, Connector
from ._enqueue import check_queue
from ._errors import InvalidOption, SchemaNotReady
from ._executor import RELEASED, Executor, Outcome, elapsed_ms
from ._job import ClaimedJob, JobContext, lenient_json_loads
from ._maintenance import Reclaimer

if TYPE_CHECKING:
    from ._app import App

log = logging.getLogger("pgjobs.worker")


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Settings of one worker process (``pgjobs worker`` flags and ``PGJOBS_*`` twins)."""

    queues: tuple[str, ...] | None = None
    """Queues to claim from. None: every queue of the app's registered tasks, plus
    ``default``."""
    concurrency: int = 10
    """Jobs run at once by this process (async ones on the loop, sync ones in threads)."""
    lease: float = 30.0
    """Seconds a claim holds a job without a heartbeat; renewed every lease/3. A job
    whose worker vanished is reclaimed this long after its last renewal."""
    shutdown_timeout: float = 25.0
    """Seconds running jobs get to finish after SIGTERM before they are interrupted
    and released (their attempt refunded). Keep it below your orchestrator's grace."""
    poll_interval: float = 1.0
    """Seconds between claim polls when no notification arrives (future run_at,
    retries, lost notifications, or listen=False)."""
    burst: bool = False
    """Exit once no due job is left (and nothing is running)."""
    recovery_budget: int = 3
    """Times a job may be recovered after a lost worker before it is dead."""
    listen: bool = True
    """LISTEN for enqueue notifications. Turn off behind a transaction-mode pooler
    (PgBouncer) that cannot hold a LISTEN session; polling alone then finds jobs."""
    reclaim_interval: float | None = None
    """Seconds between reclaim runs. None: lease / 2, at most 10."""

    def __post_init__(self) -> None:
        if self.queues is not None:
            if not self.queues:
                raise InvalidOption("queues must name at least one queue")
            for queue in self.queues:
                check_queue(queue)
        for name in ("concurrency", "recovery_budget"):
            value = getattr(self, name)
            if type(value) is not int or value < (1 if name == "concurrency" else 0):
                raise InvalidOption(f"{name} must be a positive int, not {value!r}")
        if self.lease < 1:
            raise InvalidOption("lease must be at least 1 second")
        for name in ("shutdown_timeout", "poll_interval"):
            if getattr(self, name) < 0:
                raise InvalidOption(f"{name} cannot be negative")


class Worker:
    """Runs jobs of ``app`` until stopped (or, in burst mode, until none is due)."""

    def __init__(self, app: App, config: WorkerConfig | None = None) -> None:
        self.app = app
        self.config = config = config or WorkerConfig()
        self.queues = list(
            config.queues or sorted({t.opts.queue for t in app.tasks.values()} | {"default"})
        )
        self.queue_set = frozenset(self.queues)
        self.queries = app.queries
        self.executor = Executor(app, threads=config.concurrency)
        self.reclaimer = Reclaimer(
            self.queries,
            config.reclaim_interval or min(config.lease / 2, 10.0),
            config.recovery_budget,
        )
        self.running: dict[int, tuple[JobContext, asyncio.Task[None]]] = {}
        self.leases: dict[int, JobContext] = {}
        self.stats: Counter[str] = Counter()
        self.worker_id: int | None = None
        self.stopping = False
        self.quieted = False
        self.shutdown_timeout = config.shutdown_timeout
        self._wake: asyncio.Event | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    # -- control (signal handlers call these) ------------------------------------------

    def stop(self, immediately: bool = False) -> None:
        """Stop claiming and shut down; running jobs get ``shutdown_timeout`` to finish."""
        if self.stopping and not immediately:
            return
        if immediately:
            self.shutdown_timeout = 0
        self.stopping = True
        self._poke()

    def quiet(self) -> None:
        """Stop claiming; keep running what was claimed (SIGTSTP)."""
        if not self.quieted:
            self.quieted = True
            log.info("worker %s quiet: no new claims", self.worker_id)
            asyncio.get_running_loop().create_task(self._set_state("quiet"))

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # -- main --------------------------------------------------------------------------

    async def run(self) -> Counter[str]:
        """Run until stopped; return the count of outcomes by kind."""
        self._wake = asyncio.Event()
        dsn, prepare = self.app.dsn, self.app.config.prepare
        self.claim_db = Connector(dsn, "claim", prepare, configure=_lenient_json)
        self.beat_db = Connector(dsn, "heartbeat", prepare)
        complete_db = Connector(dsn, "complete", prepare)
        self.completer = Completer(complete_db, self.queries, self._written)
        try:
            await self._check_schema()
            self.worker_id = await self._register()
        except BaseException:
            for db in (self.claim_db, self.beat_db, complete_db):
                await db.close()
            self.executor.shutdown()
            raise
        log.info(
            "pgjobs worker %s started: queues=%s concurrency=%s lease=%ss burst=%s pid=%s",
            self.worker_id, ",".join(self.queues), self.config.concurrency,
            self.config.lease, self.config.burst, os.getpid(),
        )
        background = [
            asyncio.create_task(self.completer.run(), name="pgjobs-completer"),
            asyncio.create_task(self._heartbeat_loop(), name="pgjobs-heartbeat"),
        ]
        if self.config.listen:
            background.append(asyncio.create_task(self._listen_loop(), name="pgjobs-listen"))
        try:
            await self._claim_loop()
        finally:
            await self._shutdown(background, [self.claim_db, self.beat_db, complete_db])
        return self.stats

    async def _check_schema(self) -> None:
        """Refuse to run against a schema older (or newer) than this code."""
        from ._migrate import head_revision

        schema = self.app.config.schema
        version_table = sql.Identifier(schema, "alembic_version")
        while True:
            try:
                conn = await self.claim_db.get()
                cursor = await conn.execute(
                    "SELECT to_regclass(%s) IS NOT NULL", (version_table.as_string(None),)
                )
                row = await cursor.fetchone()
                found = None
                if row and row[0]:
                    cursor = await conn.execute(
                        sql.SQL("SELECT version_num FROM {}").format(version_table)
                    )
                    version = await cursor.fetchone()
                    found = version[0] if version else None
                break
            except TRANSIENT as exc:
                await self.claim_db.backoff(exc)
        head = head_revision()
        if found != head:
            raise SchemaNotReady(
                schema, "missing" if found is None else f"at revision {found}, not {head}"
            )

    async def _register(self) -> int:
        params = {
            "host": socket.gethostname(), "pid": os.getpid(), "queues": self.queues,
            "concurrency": self.config.concurrency, "version": _version(),
        }
        while True:
            try:
                conn = await self.claim_db.get()
                cursor = await conn.execute(self.queries.worker_register, params)
                row = await cursor.fetchone()
                assert row is not None
                return int(row[0])
            except TRANSIENT as exc:
                await self.claim_db.backoff(exc)

    async def _claim_loop(self) -> None:
        wake = self._wake
        assert wake is not None
        while not self.stopping:
            free = self.config.concurrency - len(self.running)
            if self.quieted or free <= 0:
                wake.clear()
                await self._idle(None if self.quieted else self.config.poll_interval)
                continue
            wake.clear()  # before claiming: a notification during the claim re-runs it
            jobs = await self._claim(free)
            if jobs is None:
                continue
            for job in jobs:
                self._start(job)
            if len(jobs) == free:
                continue
            if self.config.burst and not jobs and not self.running:
                await self.completer.drain()  # retries written as due may be claimable
                jobs = await self._claim(free)
                if not jobs:
                    return
                for job in jobs:
                    self._start(job)
                continue
            await self._idle(self.config.poll_interval)

    async def _idle(self, timeout: float | None) -> None:
        """Wait for a wake-up or ``timeout``, reclaiming dead workers' jobs as that falls
        due: an idle worker with a long poll interval, or one without a free slot, must
        not leave them running. Returns early when a reclaim freed jobs, to claim them."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            until = self.reclaimer.next_run - time.monotonic()
            if deadline is not None:
                until = min(until, deadline - time.monotonic())
            if await self._wait(max(0.0, until)):
                return
            if deadline is not None and time.monotonic() >= deadline:
                return
            if self.reclaimer.due() and await self._reclaim():
                return

    async def _wait(self, timeout: float | None) -> bool:
        """Wait for a wake-up (True) or ``timeout`` (False)."""
        assert self._wake is not None
        if self._wake.is_set():
            return True
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _reclaim(self) -> bool:
        """Run the reclaim step; True if it made jobs available again."""
        try:
            conn = await self.claim_db.get()
            return bool(await self.reclaimer.run_once(conn))
        except TRANSIENT as exc:
            await self.claim_db.backoff(exc)
            return False

    async def _claim(self, limit: int) -> list[ClaimedJob] | None:
        """Claim up to ``limit`` jobs (None after a connection failure)."""
        try:
            conn = await self.claim_db.get()
            if self.reclaimer.due():
                await self.reclaimer.run_once(conn)
            _failpoints.hit("before_claim")
            sent = time.monotonic()
            cursor = await conn.execute(self.queries.job_claim, {
                "queues": self.queues, "limit": limit,
                "lease": timedelta(seconds=self.config.lease), "worker_id": self.worker_id,
            })
            rows = await cursor.fetchall()
        except TRANSIENT as exc:
            await self.claim_db.backoff(exc)
            return None
        _failpoints.hit("after_claim_commit")
        jobs = [ClaimedJob(*row) for row in rows]
        if jobs and time.monotonic() - sent > self.config.lease:
            # The reply took longer than the lease it granted (a partition, a stall): the
            # jobs may be reclaimed and running elsewhere by now. Hand them back rather
            # than start them; the write is fenced, so it is a no-op where they moved on.
            log.warning("claim of %d job(s) answered after %.1f s, longer than the lease; "
                        "releasing them unstarted", len(jobs), time.monotonic() - sent)
            for job in jobs:
                self.completer.submit(JobContext(job, self.queries), Outcome(RELEASED))
            return []
        return jobs

    def _start(self, job: ClaimedJob) -> None:
        ctx = JobContext(job, self.queries)
        self.leases[job.id] = ctx
        task = asyncio.create_task(self._run_job(ctx))
        self.running[job.id] = (ctx, task)

    async def _run_job(self, ctx: JobContext) -> None:
        started = time.perf_counter()
        outcome = await self.executor.execute(ctx.job, ctx)
        _failpoints.hit("after_handler")
        self.running.pop(ctx.id, None)
        self.completer.submit(ctx, outcome)
        self.stats[outcome.kind] += 1
        log.info(
            "job id=%s task=%s queue=%s attempt=%s outcome=%s duration_ms=%s",
            ctx.id, ctx.task, ctx.queue, ctx.attempt, outcome.kind, elapsed_ms(started),
        )
        self._poke()

    def _written(self, batch: list[Pending]) -> None:
        for pending in batch:
            self.leases.pop(pending.ctx.id, None)
        _failpoints.hit("after_complete_commit")

    # -- leases ------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = self.config.lease / 3
        lease = timedelta(seconds=self.config.lease)
        renewed_at = time.monotonic()
        self._arm_watchdog(renewed_at)
        while True:
            await asyncio.sleep(interval)
            held = [c for c in self.leases.values() if not c.lease_lost]
            params = {
                "ids": [c.id for c in held], "tokens": [c.job.lease_token for c in held],
                "lease": lease, "worker_id": self.worker_id,
            }
            sent = time.monotonic()
            timeout = max(interval, renewed_at + self.config.lease - sent)
            try:
                # A black-holed link hangs instead of failing: bound each beat, so that a
                # stuck connection is replaced instead of waited on until TCP gives up.
                async with asyncio.timeout(timeout):
                    conn = await self.beat_db.get()
                    cursor = await conn.execute(self.queries.job_heartbeat, params)
                    renewed = {row[0] for row in await cursor.fetchall()}
            except TimeoutError:
                await self.beat_db.backoff(TimeoutError(f"no reply within {timeout:.1f} s"))
                continue
            except TRANSIENT as exc:
                await self.beat_db.backoff(exc)
                continue
            renewed_at = sent
            self._arm_watchdog(sent)
            for ctx in held:
                if ctx.id not in renewed and ctx.id in self.leases and not ctx.completed:
                    self._lease_lost(ctx)

    def _arm_watchdog(self, renewed_at: float) -> None:
        """Stop every held job ``lease`` seconds after the last heartbeat that was sent
        and answered: by then another worker may have reclaimed it. A timer, so neither a
        heartbeat stuck in a partition nor a paused process can postpone it."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        delay = renewed_at + self.config.lease - time.monotonic()
        self._watchdog = asyncio.get_running_loop().call_later(delay, self._leases_lapsed)

    def _leases_lapsed(self) -> None:
        held = [c for c in self.leases.values() if not c.completed and not c.lease_lost]
        if held:
            log.warning("no heartbeat answered for %ss: this worker's leases have lapsed",
                        self.config.lease)
        for ctx in held:
            self._lease_lost(ctx)

    def _lease_lost(self, ctx: JobContext) -> None:
        if ctx.lease_lost:
            return
        log.warning("job %s lost its lease (attempt %s): stopping it", ctx.id, ctx.attempt)
        ctx.lease_lost_event.set()
        ctx.stop_event.set()
        entry = self.running.get(ctx.id)
        task = self.app.tasks.get(ctx.task)
        if entry is not None and task is not None and task.is_async:
            entry[1].cancel()

    # -- listen ------------------------------------------------------------------------

    async def _listen_loop(self) -> None:
        listen_db = Connector(self.app.dsn, "listen", prepare=False)
        channel = sql.SQL("LISTEN {}").format(sql.Identifier(self.app.config.channel))
        try:
            while True:
                try:
                    conn = await listen_db.get()
                    await conn.execute(channel)
                    self._poke()  # jobs enqueued while we were not listening
                    async for note in conn.notifies():
                        if note.payload in self.queue_set:
                            self._poke()
                except TRANSIENT as exc:
                    await listen_db.backoff(exc)
        finally:
            await listen_db.close()

    # -- shutdown ----------------------------------------------------------------------

    async def _shutdown(self, background: list[asyncio.Task[Any]], dbs: list[Connector]) -> None:
        if not self.config.burst or self.running:
            await self._set_state("stopping")
        tasks = [task for _, task in self.running.values()]
        if tasks:
            log.info("waiting up to %ss for %d running job(s)", self.shutdown_timeout, len(tasks))
            await asyncio.wait(tasks, timeout=self.shutdown_timeout)
        if self.running:
            log.warning("interrupting %d job(s) after the shutdown timeout; they are "
                        "released to run again", len(self.running))
            for ctx, task in list(self.running.values()):
                ctx.stop_event.set()
                task.cancel()
            interrupted = [t for _, t in self.running.values()]
            if interrupted:
                await asyncio.wait(interrupted, timeout=5)
        await self.completer.drain()
        await self._set_state("stopped")
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if self._watchdog is not None:
            self._watchdog.cancel()
        for db in dbs:
            await db.close()
        self.executor.shutdown()
        log.info("pgjobs worker %s stopped: %s", self.worker_id, dict(self.stats))

    async def _set_state(self, state: str) -> None:
        try:
            conn = await self.beat_db.get()
            params = {"state": state, "id": self.worker_id}
            await conn.execute(self.queries.worker_set_state, params)
        except TRANSIENT as exc:
            log.warning("could not record worker state %s: %s", state, exc)


def _lenient_json(conn: psycopg.AsyncConnection[Any]) -> None:
    set_json_loads(lenient_json_loads, conn)


def _version() -> str:
    from . import __version__

    return __version__
