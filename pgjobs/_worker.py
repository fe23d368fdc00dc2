"""The worker: claims jobs in batches, runs them, and keeps their leases alive.

One asyncio loop per process with five connections, one per role, so no role ever waits
for another's query:

    claim        claim loop (K = free slots)
    complete     the completer's batched, fenced outcome writes
    heartbeat    lease renewal for every held job, every lease/3
    listen       LISTEN for enqueue notifications (on App.listen_dsn, a direct connection
                 when the others go through PgBouncer); polling covers any gap
    maintenance  reclaim, expire, prune, periodic ticks (not in burst mode): also while
                 every slot is busy or the worker is quiet, so lost jobs come back even
                 when the whole fleet is saturated
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import Counter, deque
from collections.abc import Callable
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
from ._executor import (
    DEAD,
    RELEASED,
    RETRY,
    Executor,
    Outcome,
    default_backoff,
    elapsed_ms,
    failure,
)
from ._job import ClaimedJob, JobContext, lenient_json_loads
from ._limits import ClaimRouter
from ._maintenance import (
    LimitKeyPruner,
    Maintenance,
    Pruner,
    Retention,
    StepLike,
    default_steps,
)
from ._periodic import PeriodicEnqueuer
from ._revision import HEAD as HEAD_REVISION

if TYPE_CHECKING:
    from ._app import App

log = logging.getLogger("pgjobs.worker")

# One line per job costs about as much as running a no-op job, so routine outcomes are
# DEBUG and a summary line reports them (``WorkerConfig.summary_interval``).
OUTCOME_LEVEL = {RETRY: logging.INFO, DEAD: logging.WARNING}


class WorkerStopped(Exception):
    """Stop was requested before the worker got going."""


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
    """LISTEN for enqueue notifications, on the app's ``listen_dsn`` (a direct connection
    when the DSN goes through PgBouncer; with ``App(pgbouncer=True)`` and no listen DSN
    the worker polls). False: polling alone finds jobs."""
    reclaim_interval: float | None = None
    """Seconds between reclaim runs. None: lease / 2, at most 10."""
    prefetch: int = 100
    """Most jobs claimed ahead of free slots, leased and held until a slot frees. Used only
    while jobs finish faster than a claim round trip (see ``ClaimAhead``), so long jobs are
    never held back from other workers. 0: claim only for free slots."""
    summary_interval: float = 60.0
    """Seconds between INFO summary lines (outcome counts and rate since the last one),
    written only when jobs finished. Each success is a DEBUG line; retries are INFO and
    deaths WARNING. 0: no summary."""
    retention_succeeded: float | timedelta | None = 86_400.0
    """Seconds succeeded jobs are kept after they finish (a day); None keeps them forever.
    Jobs of a batch are kept until the batch has been complete this long."""
    retention_cancelled: float | timedelta | None = 86_400.0
    """Seconds cancelled jobs are kept (a day); None: forever."""
    retention_dead: float | timedelta | None = 7 * 86_400.0
    """Seconds dead and expired jobs are kept (a week, time to look and retry); None:
    forever."""
    retention_workers: float | timedelta | None = 86_400.0
    """Seconds a ``workers`` row is kept after its last heartbeat (stopped workers, and
    ones that died without saying so); None: forever. At least three leases."""

    def __post_init__(self) -> None:
        if isinstance(self.queues, str):  # "mail" or "mail,sms", not the letters m, a, ...
            queues = tuple(q.strip() for q in self.queues.split(",") if q.strip())
            object.__setattr__(self, "queues", queues)
        if self.queues is not None:
            if not self.queues:
                raise InvalidOption("queues must name at least one queue")
            for queue in self.queues:
                check_queue(queue)
        for name in ("concurrency", "recovery_budget", "prefetch"):
            value = getattr(self, name)
            if type(value) is not int or value < (1 if name == "concurrency" else 0):
                least = 1 if name == "concurrency" else 0
                raise InvalidOption(f"{name} must be an int >= {least}, not {value!r}")
        if self.lease < 1:
            raise InvalidOption("lease must be at least 1 second")
        for name in ("shutdown_timeout", "poll_interval", "summary_interval"):
            if getattr(self, name) < 0:
                raise InvalidOption(f"{name} cannot be negative")
        for name in ("retention_succeeded", "retention_cancelled", "retention_dead",
                     "retention_workers"):
            if isinstance(getattr(self, name), timedelta):
                object.__setattr__(self, name, getattr(self, name).total_seconds())
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(
                    value, int | float) or not value > 0):
                raise InvalidOption(
                    f"{name} must be a positive number of seconds (or a timedelta), or None "
                    f"to keep those rows forever, not {value!r}")
        workers = self.retention_workers
        if workers is not None and not _seconds(workers) >= 3 * self.lease:
            raise InvalidOption(
                f"retention_workers must be at least three leases ({3 * self.lease:g}s), so "
                f"a live worker's row is never deleted, or None; not {self.retention_workers!r}")

    @property
    def retention(self) -> Retention:
        """The retention periods in seconds (``__post_init__`` turned timedeltas into
        seconds)."""
        periods = (self.retention_succeeded, self.retention_cancelled, self.retention_dead,
                   self.retention_workers)
        return Retention(*(None if p is None else float(_seconds(p)) for p in periods))


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else value


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
        self.maintenance = default_steps(self.queries, config.lease, config.recovery_budget)
        if config.reclaim_interval:
            self.maintenance[0].interval = config.reclaim_interval
        self.router = ClaimRouter(self.queries, self.queues, keyed=any(
            t.limit is not None and t.opts.queue in self.queue_set for t in app.tasks.values()))
        # Keyed by lease token: a job this worker lost and claimed again is two attempts.
        self.running: dict[Any, tuple[JobContext, asyncio.Task[None]]] = {}
        self.ready: deque[JobContext] = deque()  # claimed ahead, waiting for a free slot
        self.ahead = ClaimAhead(config.concurrency, config.prefetch)
        self.claimed_limited = False  # whether the last claim sent job_claim_limited
        self.leases: dict[Any, JobContext] = {}
        self.stats: Counter[str] = Counter()
        self.summary = Summary(config.summary_interval)
        self.worker_id: int | None = None
        self.stopping = False
        self.quieted = False
        self.shutdown_timeout = config.shutdown_timeout
        self._wake: asyncio.Event | None = None
        self._immediately: asyncio.Event | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    # -- control (signal handlers call these) ------------------------------------------

    def stop(self, immediately: bool = False) -> None:
        """Stop claiming and shut down; running jobs get ``shutdown_timeout`` to finish."""
        if self.stopping and not immediately:
            return
        if immediately:
            self.shutdown_timeout = 0
            if self._immediately is not None:
                self._immediately.set()
        if not self.stopping:
            for ctx, _ in self.running.values():
                ctx.shutting_down = True
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
        self._immediately = asyncio.Event()
        dsn, prepare = self.app.dsn, self.app.config.prepare_threshold is not None
        self.claim_db = Connector(dsn, "claim", prepare, configure=_lenient_json,
                                  generic_plans=True)
        self.beat_db = Connector(dsn, "heartbeat", prepare)
        self.maintenance_db = Connector(dsn, "maintenance", prepare)
        self.maintenance_runner = self._maintenance(self.maintenance_db)
        complete_db = Connector(dsn, "complete", prepare)
        self.completer = Completer(complete_db, self.queries, self._written)
        try:
            await self._check_schema()
            self.worker_id = await self._register()
        except WorkerStopped as exc:
            log.warning("pgjobs worker: %s", exc)
            for db in (self.claim_db, self.beat_db, complete_db, self.maintenance_db):
                await db.close()
            self.executor.shutdown()
            return self.stats
        except BaseException:
            for db in (self.claim_db, self.beat_db, complete_db, self.maintenance_db):
                await db.close()
            self.executor.shutdown()
            raise
        log.info(
            "pgjobs worker %s started: queues=%s concurrency=%s lease=%ss burst=%s pid=%s",
            self.worker_id, ",".join(self.queues), self.config.concurrency,
            self.config.lease, self.config.burst, os.getpid(),
        )
        # One pass before the first claim: lost jobs come back and expired ones end
        # before anything is claimed (and burst runs see a settled queue).
        await self.maintenance_runner.run_due()
        background = [
            asyncio.create_task(self.completer.run(), name="pgjobs-completer"),
            asyncio.create_task(self._heartbeat_loop(), name="pgjobs-heartbeat"),
        ]
        if self.config.listen and self.app.listen_dsn is not None:
            background.append(asyncio.create_task(self._listen_loop(), name="pgjobs-listen"))
        elif self.config.listen:
            log.info("no LISTEN: the DSN goes through PgBouncer and no listen DSN is set; "
                     "polling every %ss", self.config.poll_interval)
        background.append(
            asyncio.create_task(self.maintenance_runner.run(), name="pgjobs-maintenance")
        )
        try:
            await self._claim_loop()
        finally:
            await self._shutdown(
                background, [self.claim_db, self.beat_db, complete_db, self.maintenance_db]
            )
        return self.stats

    def _maintenance(self, connector: Connector) -> Maintenance:
        # A burst worker (drain, then exit) enqueues no periodic ticks: tests that drain
        # must not find cron jobs appearing under them.
        steps: list[StepLike] = [*self.maintenance, LimitKeyPruner(self.queries),
                                 Pruner(self.queries, self.config.retention)]
        if not self.config.burst:
            steps.append(PeriodicEnqueuer(self.app))
        return Maintenance(connector, steps)

    async def _check_schema(self) -> None:
        """Refuse to run against a schema older (or newer) than this code."""
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
                if self.stopping:
                    raise WorkerStopped("stopped before the database could be reached") from exc
                await self.claim_db.backoff(exc)
        head = HEAD_REVISION
        if found != head:
            raise SchemaNotReady(
                schema, "missing" if found is None else f"at revision {found}, not {head}"
            )

    async def _register(self) -> int:
        params = {
            "host": socket.gethostname(), "pid": os.getpid(), "queues": self.queues,
            "concurrency": self.config.concurrency, "version": _version(),
            "lease": self.config.lease,
        }
        while True:
            try:
                conn = await self.claim_db.get()
                cursor = await conn.execute(self.queries.worker_register, params)
                row = await cursor.fetchone()
                assert row is not None
                return int(row[0])
            except TRANSIENT as exc:
                if self.stopping:
                    raise WorkerStopped("stopped before the database could be reached") from exc
                await self.claim_db.backoff(exc)

    async def _claim_loop(self) -> None:
        wake = self._wake
        assert wake is not None
        while not self.stopping:
            self._fill_slots()
            depth = self.ahead.depth()
            want = self.config.concurrency + depth - len(self.running) - len(self.ready)
            # Claim when a slot is free and nothing is held, or when the held jobs run low:
            # one claim of many rather than a round trip per finished job.
            if self.quieted or want <= 0 or len(self.ready) > depth // 2:
                wake.clear()
                await self._idle(None if self.quieted else self.config.poll_interval)
                continue
            wake.clear()  # before claiming: a notification during the claim re-runs it
            jobs = await self._claim(want)
            if jobs is None:
                continue
            self._accept(jobs)
            if len(jobs) >= want or (jobs and self.claimed_limited):
                # More may be due (a limited claim stops short of `want` at key limits).
                # The jobs just accepted start first: the loop yields before it claims.
                await asyncio.sleep(0)
                continue
            # Every job due is claimed: the router's periodic work, then maybe its sweep.
            swept = await self._claim(want - len(jobs), sweep=True)
            if swept is None:
                continue  # the connection failed (and was backed off): claim again
            if swept:
                self._accept(swept)
                continue
            if jobs:
                # Claim again when woken (a notification, a finished job, a stop) or at
                # the next poll.
                await self._idle(self.config.poll_interval)
                continue
            if self.config.burst and not self.running and not self.ready:
                await self.completer.drain()  # retries written as due may be claimable
                jobs = await self._claim(want)
                if not jobs:
                    return
                self._accept(jobs)
                continue
            await self._idle(self.config.poll_interval)

    async def _idle(self, timeout: float | None) -> None:
        """Wait for a wake-up (a notification, a finished job, a stop) or ``timeout``.
        Reclaims run on the maintenance connection meanwhile and notify the queues of
        the jobs they make available, so a reclaimed job wakes this loop like a new one."""
        await self._wait(timeout)

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

    async def _claim(self, limit: int, sweep: bool = False) -> list[ClaimedJob] | None:
        """Claim up to ``limit`` jobs (None after a connection failure). With ``sweep``,
        only when the router has periodic work due (else [])."""
        try:
            conn = await self.claim_db.get()
            if sweep:
                chosen = await self.router.when_idle(conn)
                if chosen is None or limit <= 0:
                    return []
                statement: sql.SQL | sql.Composed = chosen
            else:
                statement = await self.router.statement(conn)
            self.claimed_limited = statement is not self.queries.job_claim
            _failpoints.hit("before_claim")
            sent = time.monotonic()
            cursor = await conn.execute(statement, {
                "queues": self.queues, "limit": limit,
                "lease": timedelta(seconds=self.config.lease), "worker_id": self.worker_id,
            })
            rows = await cursor.fetchall()
            self.ahead.claimed(time.monotonic() - sent)
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

    def _accept(self, jobs: list[ClaimedJob]) -> None:
        """Lease (heartbeat) every claimed job at once; start as many as slots allow."""
        claimed = {job.id for job in jobs}
        for stale, _ in list(self.running.values()):
            if stale.id in claimed:  # our earlier attempt lost its lease and was reclaimed
                self._lease_lost(stale)
        for stale in self.ready:
            if stale.id in claimed:
                self._lease_lost(stale)
        for job in jobs:
            ctx = JobContext(job, self.queries)
            if self.stopping:
                ctx.shutting_down = True
            self.leases[job.lease_token] = ctx
            self.ready.append(ctx)
        self._fill_slots()

    def _fill_slots(self) -> None:
        while self.ready and len(self.running) < self.config.concurrency:
            ctx = self.ready.popleft()
            if ctx.lease_lost:  # reclaimed while it waited: another attempt owns it
                self.leases.pop(ctx.job.lease_token, None)
                continue
            task = asyncio.create_task(self._run_job(ctx))
            self.running[ctx.job.lease_token] = (ctx, task)

    async def _run_job(self, ctx: JobContext) -> None:
        started = time.perf_counter()
        try:
            outcome = await self.executor.execute(ctx.job, ctx)
        except BaseException as exc:
            outcome = failure(ctx.job, exc, default_backoff)
            log.exception("job %s: internal error, recorded as a failure", ctx.id)
        _failpoints.hit("after_handler")
        self.running.pop(ctx.job.lease_token, None)
        self.completer.submit(ctx, outcome)
        self.stats[outcome.kind] += 1
        self.ahead.ran(time.perf_counter() - started)
        level = OUTCOME_LEVEL.get(outcome.kind, logging.DEBUG)
        if log.isEnabledFor(level):
            log.log(level, "job id=%s task=%s queue=%s attempt=%s outcome=%s duration_ms=%s",
                    ctx.id, ctx.task, ctx.queue, ctx.attempt, outcome.kind, elapsed_ms(started))
        self.summary.count(outcome.kind, len(self.running) + len(self.ready))
        self._poke()

    def _written(self, batch: list[Pending]) -> None:
        for pending in batch:
            self.leases.pop(pending.ctx.job.lease_token, None)
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
                    rows = await cursor.fetchall()
            except TimeoutError:
                await self.beat_db.backoff(TimeoutError(f"no reply within {timeout:.1f} s"))
                continue
            except TRANSIENT as exc:
                await self.beat_db.backoff(exc)
                continue
            renewed_at = sent
            self._arm_watchdog(sent)
            answered = {token for token, _ in rows}  # renewed, or busy (locked by its tx)
            for ctx in held:
                token = ctx.job.lease_token
                if token not in answered and token in self.leases and not ctx.completed:
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
        entry = self.running.get(ctx.job.lease_token)
        task = self.app.tasks.get(ctx.task)
        if entry is not None and task is not None and task.is_async:
            entry[1].cancel()

    # -- maintenance -------------------------------------------------------------------

    # -- listen ------------------------------------------------------------------------

    async def _listen_loop(self) -> None:
        listen_dsn = self.app.listen_dsn
        assert listen_dsn is not None
        listen_db = Connector(listen_dsn, "listen", prepare=False)
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
        while self.ready:  # claimed ahead, never started: available again, attempt refunded
            ctx = self.ready.popleft()
            if not ctx.lease_lost:
                self.completer.submit(ctx, Outcome(RELEASED))
                self.stats[RELEASED] += 1
        tasks = [task for _, task in self.running.values()]
        if tasks and self.shutdown_timeout > 0:
            log.info("waiting up to %ss for %d running job(s)", self.shutdown_timeout, len(tasks))
            assert self._immediately is not None
            cut_short = asyncio.create_task(self._immediately.wait())
            everything = asyncio.ensure_future(asyncio.wait(tasks))
            await asyncio.wait([everything, cut_short], timeout=self.shutdown_timeout,
                               return_when=asyncio.FIRST_COMPLETED)
            cut_short.cancel()
            everything.cancel()
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
        self.summary.flush(self.summary.clock(), 0)
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


def _version() -> str:
    from . import __version__

    return __version__
