"""``pgjobs bench``: pgjobs' throughput and latency on your server, next to minimal SQL.

Every pgjobs figure is measured beside a hand-written minimal-SQL baseline doing the same
work on the same tables, in the same run, alternating which goes first each round, so the
ratio is meaningful even on a busy machine. Scenarios:

    enqueue_single  one job per transaction (task.enqueue(conn); commit), K enqueuers
    enqueue_bulk    task.enqueue_many(conn, rows) vs COPY
    drain           pre-filled no-op jobs run by 1 and N worker processes, sync and async
                    handlers, with and without current_job().complete(conn)
    latency         enqueue-commit -> handler-start at a fixed rate, idle worker

It creates its own schema (``pgjobs_bench_<random>``, its own NOTIFY channel), so real
queues and workers never see its jobs, and drops it at the end.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import platform
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TextIO

import psycopg
from psycopg import sql

if TYPE_CHECKING:
    from ._app import App

SCENARIOS = ("enqueue_single", "enqueue_bulk", "drain", "latency")
DRAIN_KINDS = ("sync", "async", "sync_tx", "async_tx")


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of one ``pgjobs bench`` run (``--flag`` / ``PGJOBS_BENCH_*``)."""

    rounds: int = 3
    scenarios: tuple[str, ...] = SCENARIOS
    single: int = 2_000
    """Jobs per enqueue_single measurement (split among the enqueuers)."""
    enqueuers: int = 1
    """Concurrent single-job enqueuers (threads, one connection each)."""
    bulk: int = 50_000
    """Jobs per enqueue_bulk measurement."""
    bulk_batch: int = 10_000
    """Rows per enqueue_many call (and per COPY) in enqueue_bulk."""
    drain: int = 20_000
    """Pre-filled jobs per drain measurement."""
    processes: int = 2
    """Worker processes of the multi-process drain (the single-process one always runs)."""
    concurrency: int = 10
    """Worker concurrency in drain and latency."""
    drain_kinds: tuple[str, ...] = DRAIN_KINDS
    latency_rate: float = 50.0
    """Jobs per second in the latency scenario."""
    latency_seconds: float = 5.0


# -- the bench app (built per process: spawned children cannot share the parent's) ------

_STARTS: list[tuple[int, float]] = []
_POOLS: dict[str, Any] = {}


def bench_app(dsn: str, schema: str) -> Any:
    """A pgjobs App on the bench schema with the no-op tasks of every scenario."""
    import pgjobs

    app = pgjobs.App(dsn=dsn, schema=schema)

    @app.job(name="noop")
    def noop() -> None:
        pass

    @app.job(name="async")
    async def anoop() -> None:
        pass

    @app.job(name="sync_tx")
    def noop_tx() -> None:
        with _POOLS["sync"].connection() as conn:
            pgjobs.current_job().complete(conn)

    @app.job(name="async_tx")
    async def anoop_tx() -> None:
        async with _POOLS["async"].connection() as aconn:
            await pgjobs.current_job().complete_async(aconn)

    @app.job(name="stamp")
    async def stamp() -> None:
        _STARTS.append((pgjobs.current_job().id, time.time()))

    return app


def _task_name(kind: str) -> str:
    return "noop" if kind == "sync" else kind


# -- helpers ---------------------------------------------------------------------------


class Bench:
    """One run: a scratch schema on ``dsn`` and the measurements taken in it."""

    def __init__(self, dsn: str, config: BenchConfig, progress: TextIO | None = sys.stderr):
        self.dsn = dsn
        self.config = config
        self.schema = f"pgjobs_bench_{uuid.uuid4().hex[:8]}"
        self.jobs = sql.Identifier(self.schema, "jobs")
        self.channel = f"pgjobs_{self.schema}"
        self.progress = progress
        self.runs: dict[str, list[float]] = {}

    def say(self, text: str, end: str = "\n") -> None:
        if self.progress is not None:
            print(text, end=end, file=self.progress, flush=True)

    def record(self, name: str, value: float, unit: str) -> None:
        self.runs.setdefault(name, []).append(value)
        self.say(f"{value:>12,.1f} {unit}")

    def q(self, text: str) -> sql.SQL | sql.Composed:
        return sql.SQL(text).format(jobs=self.jobs)

    def reset(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("TRUNCATE {}, {}").format(
                self.jobs, sql.Identifier(self.schema, "workers")))

    def fill(self, n: int, task: str) -> None:
        """``n`` available jobs of ``task``, written with COPY (not measured)."""
        self.reset()
        with psycopg.connect(self.dsn) as conn, conn.cursor().copy(
            self.q("COPY {jobs} (queue, task, args) FROM STDIN")
        ) as copy:
            for _ in range(n):
                copy.write_row(("default", task, "{}"))
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("VACUUM ANALYZE {}").format(self.jobs))

    # -- setup --------------------------------------------------------------------------

    def server_info(self) -> dict[str, str]:
        names = ("server_version", "synchronous_commit", "fsync", "full_page_writes",
                 "wal_sync_method", "shared_buffers", "max_connections")
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return {
                name: str(conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name)))
                          .fetchone()[0])  # type: ignore[index]
                for name in names
            }

    @contextmanager
    def scratch_schema(self) -> Iterator[None]:
        from . import _migrate

        _migrate.upgrade(self.dsn, self.schema)
        try:
            yield
        finally:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(self.schema)))

    # -- run ------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        from . import __version__

        cfg = self.config
        server = self.server_info()
        self.say(f"pgjobs {__version__} bench on PostgreSQL {server['server_version']} "
                 f"(synchronous_commit={server['synchronous_commit']}, "
                 f"fsync={server['fsync']}); schema {self.schema}")
        started = time.time()
        with self.scratch_schema():
            for r in range(cfg.rounds):
                for scenario in cfg.scenarios:
                    getattr(self, scenario)(r)
        return self.report(server, time.time() - started)

    def step(self, r: int, label: str) -> None:
        self.say(f"[round {r + 1}/{self.config.rounds}] {label:<52}", end="")

    @staticmethod
    def alternate(r: int, pair: list[Callable[[], None]]) -> None:
        for fn in pair if r % 2 == 0 else reversed(pair):
            fn()

    # -- enqueue_single -----------------------------------------------------------------

    def enqueue_single(self, r: int) -> None:
        self.alternate(r, [
            lambda: self._single(r, "minimal_sql", self._insert_minimal(notify=False)),
            lambda: self._single(r, "minimal_sql_notify", self._insert_minimal(notify=True)),
            lambda: self._single(r, "pgjobs", self._insert_pgjobs()),
        ])

    def _insert_minimal(self, notify: bool) -> Callable[[psycopg.Connection[Any]], None]:
        text = "INSERT INTO {jobs} (queue, task, args) VALUES ('default', 'noop', '{{}}') " \
               "RETURNING id"
        if notify:
            text = f"WITH j AS ({text}) SELECT j.id, pg_notify(%s, 'default') FROM j"
        query = self.q(text)
        params = (self.channel,) if notify else None

        def insert(conn: psycopg.Connection[Any]) -> None:
            conn.execute(query, params).fetchone()
        return insert

    def _insert_pgjobs(self) -> Callable[[psycopg.Connection[Any]], None]:
        task = bench_app(self.dsn, self.schema).tasks["noop"]

        def insert(conn: psycopg.Connection[Any]) -> None:
            task.enqueue(conn)
        return insert

    def _single(self, r: int, system: str, insert: Callable[[psycopg.Connection[Any]], None]
                ) -> None:
        k = self.config.enqueuers
        per = max(1, self.config.single // k)
        self.step(r, f"enqueue_single x{k} {system}")
        self.reset()
        conns = [psycopg.connect(self.dsn, prepare_threshold=0) for _ in range(k)]
        barrier = threading.Barrier(k + 1)

        def loop(conn: psycopg.Connection[Any]) -> None:
            barrier.wait()
            for _ in range(per):
                insert(conn)
                conn.commit()

        threads = [threading.Thread(target=loop, args=(c,)) for c in conns]
        for t in threads:
            t.start()
        barrier.wait()
        start = time.perf_counter()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        for c in conns:
            c.close()
        self.record(f"enqueue_single/{system}", per * k / elapsed, "jobs/s")

    # -- enqueue_bulk -------------------------------------------------------------------

    def enqueue_bulk(self, r: int) -> None:
        self.alternate(r, [self._bulk_copy(r), self._bulk_pgjobs(r)])

    def _bulk_copy(self, r: int) -> Callable[[], None]:
        def run() -> None:
            n, batch = self.config.bulk, self.config.bulk_batch
            self.step(r, f"enqueue_bulk minimal_sql (COPY, {batch:,}/statement)")
            self.reset()
            with psycopg.connect(self.dsn) as conn:
                start = time.perf_counter()
                for offset in range(0, n, batch):
                    with conn.cursor().copy(
                        self.q("COPY {jobs} (queue, task, args) FROM STDIN")
                    ) as copy:
                        for _ in range(min(batch, n - offset)):
                            copy.write_row(("default", "noop", "{}"))
                    conn.commit()
                self.record("enqueue_bulk/minimal_sql", n / (time.perf_counter() - start),
                            "jobs/s")
        return run

    def _bulk_pgjobs(self, r: int) -> Callable[[], None]:
        def run() -> None:
            n, batch = self.config.bulk, self.config.bulk_batch
            self.step(r, f"enqueue_bulk pgjobs (enqueue_many, {batch:,}/call)")
            self.reset()
            task = bench_app(self.dsn, self.schema).tasks["noop"]
            with psycopg.connect(self.dsn) as conn:
                start = time.perf_counter()
                for offset in range(0, n, batch):
                    task.enqueue_many(conn, [{}] * min(batch, n - offset))
                    conn.commit()
                self.record("enqueue_bulk/pgjobs", n / (time.perf_counter() - start), "jobs/s")
        return run

    # -- drain ----------------------------------------------------------------------------

    def drain(self, r: int) -> None:
        runs: list[Callable[[], None]] = [
            lambda: self._drain_minimal(r, 100), lambda: self._drain_minimal(r, 10)]
        for procs in sorted({1, self.config.processes}):
            for kind in self.config.drain_kinds:
                runs.append(lambda p=procs, k=kind: self._drain_pgjobs(r, k, p))  # type: ignore[misc]
        self.alternate(r, runs)

    def _drain_minimal(self, r: int, batch: int) -> None:
        """Claim ``batch`` rows, mark them done: two connections, nothing else."""
        n = self.config.drain
        self.fill(n, "noop")
        self.step(r, f"drain minimal_sql (claims of {batch}, 2 connections)")
        claim = self.q("""
            UPDATE {jobs} SET state = 'running', lease_token = gen_random_uuid(),
                   lease_expires_at = now() + interval '30 s', attempt = attempt + 1
            WHERE id IN (SELECT id FROM {jobs} WHERE state = 'available'
                         AND queue = 'default' AND run_at <= now()
                         ORDER BY priority, run_at, id LIMIT %s FOR UPDATE SKIP LOCKED)
            RETURNING id, lease_token""")
        done = self.q("""
            UPDATE {jobs} SET state = 'succeeded', lease_token = NULL,
                   lease_expires_at = NULL, finished_at = now()
            FROM unnest(%s::bigint[], %s::uuid[]) AS d(id, token)
            WHERE {jobs}.id = d.id AND {jobs}.lease_token = d.token""")
        total = 0
        with psycopg.connect(self.dsn, autocommit=True, prepare_threshold=0) as a, \
                psycopg.connect(self.dsn, autocommit=True, prepare_threshold=0) as b:
            start = time.perf_counter()
            while rows := a.execute(claim, (batch,)).fetchall():
                b.execute(done, ([row[0] for row in rows], [row[1] for row in rows]))
                total += len(rows)
            elapsed = time.perf_counter() - start
        if total != n:
            raise RuntimeError(f"minimal drain ran {total} of {n} jobs")
        self.record(f"drain/minimal_sql_claims_of_{batch}", n / elapsed, "jobs/s")

    def _drain_pgjobs(self, r: int, kind: str, procs: int) -> None:
        n, conc = self.config.drain, self.config.concurrency
        self.fill(n, _task_name(kind))
        self.step(r, f"drain pgjobs {kind} x{procs} process(es), concurrency {conc}")
        ctx = multiprocessing.get_context("spawn")
        ready = ctx.Barrier(procs + 1)
        results = ctx.Queue()
        children = [
            ctx.Process(target=_drain_child, args=(self.dsn, self.schema, kind, conc, ready,
                                                   results), daemon=True)
            for _ in range(procs)
        ]
        for child in children:
            child.start()
        ready.wait(timeout=120)
        start = time.perf_counter()
        stats: dict[str, int] = {}
        for _ in children:
            for key, value in results.get(timeout=600).items():
                stats[key] = stats.get(key, 0) + value
        elapsed = time.perf_counter() - start
        for child in children:
            child.join(30)
        if stats.get("succeeded", 0) != n:
            raise RuntimeError(f"pgjobs drain ({kind}) outcomes {stats}, expected {n} succeeded")
        self.record(f"drain/pgjobs_{kind}_p{procs}", n / elapsed, "jobs/s")

    # -- latency ----------------------------------------------------------------------------

    def latency(self, r: int) -> None:
        self.alternate(r, [lambda: self._latency(r, "minimal_sql"),
                           lambda: self._latency(r, "pgjobs")])

    def _latency(self, r: int, system: str) -> None:
        cfg = self.config
        self.reset()
        self.step(r, f"latency {system} at {cfg.latency_rate:g}/s for {cfg.latency_seconds:g} s")
        ctx = multiprocessing.get_context("spawn")
        ready, stop, results = ctx.Event(), ctx.Event(), ctx.Queue()
        target = _latency_child_pgjobs if system == "pgjobs" else _latency_child_minimal
        child = ctx.Process(target=target, args=(self.dsn, self.schema, cfg.concurrency,
                                                 ready, stop, results), daemon=True)
        child.start()
        ready.wait(120)
        time.sleep(0.5)  # the worker is idle, listening
        committed = self._produce(system)
        self._wait_claimed(timeout=30)
        time.sleep(0.2)
        stop.set()
        starts: list[tuple[int, float]] = results.get(timeout=60)
        child.join(30)
        delays = sorted((t - committed[i]) * 1000 for i, t in starts if i in committed)
        if len(delays) < len(committed):
            raise RuntimeError(f"latency: {len(committed) - len(delays)} job(s) never started")
        for name, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99)):
            self.runs.setdefault(f"latency_{name}/{system}", []).append(percentile(delays, q))
        self.say(f"{percentile(delays, 0.5):>9.2f} ms p50 {percentile(delays, 0.99):7.2f} ms p99")

    def _wait_claimed(self, timeout: float) -> None:
        """Until no job is left available (a loaded machine may lag behind the producer)."""
        deadline = time.monotonic() + timeout
        query = self.q("SELECT count(*) FROM {jobs} WHERE state = 'available'")
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while time.monotonic() < deadline:
                if conn.execute(query).fetchone() == (0,):
                    return
                time.sleep(0.05)

    def _produce(self, system: str) -> dict[int, float]:
        """Enqueue at the configured rate; return each job's commit-return time.

        Latency counts from when commit() returns to the producer. The job became visible
        a little earlier, during the commit, so on a busy machine a worker can start it
        before the producer reads its clock: a few samples may be slightly negative."""
        cfg = self.config
        committed: dict[int, float] = {}
        insert = self.q(
            "WITH j AS (INSERT INTO {jobs} (queue, task, args) VALUES ('default', 'stamp', "
            "'{{}}') RETURNING id) SELECT j.id, pg_notify(%s, 'default') FROM j")
        task = bench_app(self.dsn, self.schema).tasks["stamp"]
        with psycopg.connect(self.dsn, prepare_threshold=0) as conn:
            interval = 1.0 / cfg.latency_rate
            next_at = time.perf_counter()
            for _ in range(int(cfg.latency_rate * cfg.latency_seconds)):
                if system == "pgjobs":
                    job_id = task.enqueue(conn).id
                else:
                    job_id = conn.execute(insert, (self.channel,)).fetchone()[0]  # type: ignore[index]
                conn.commit()
                committed[job_id] = time.time()
                next_at += interval
                time.sleep(max(0.0, next_at - time.perf_counter()))
        return committed

    # -- report ---------------------------------------------------------------------------

    def report(self, server: dict[str, str], seconds: float) -> dict[str, Any]:
        from . import __version__

        med = {name: statistics.median(values) for name, values in self.runs.items()}
        rows: list[dict[str, Any]] = []

        def row(name: str, label: str, pgjobs: str, baseline: str, unit: str,
                higher_is_better: bool = True) -> None:
            if pgjobs not in med or baseline not in med:
                return
            pairs = [a / b for a, b in zip(self.runs[pgjobs], self.runs[baseline], strict=False)
                     if b]
            rows.append({
                "name": name, "label": label, "unit": unit, "higher_is_better": higher_is_better,
                "pgjobs": med[pgjobs], "baseline": med[baseline], "baseline_name": baseline,
                "ratio": med[pgjobs] / med[baseline] if med[baseline] else None,
                # the median of each round's own ratio: steadier when the machine's load
                # drifts between rounds (both sides of a round share its conditions)
                "ratio_paired": statistics.median(pairs) if pairs else None,
                "pgjobs_runs": self.runs[pgjobs], "baseline_runs": self.runs[baseline],
            })

        k = self.config.enqueuers
        row("enqueue_single", f"enqueue, one job per transaction ({k} enqueuer(s))",
            "enqueue_single/pgjobs", "enqueue_single/minimal_sql", "jobs/s")
        row("enqueue_single_notify_cost", "  minimal SQL with NOTIFY vs without",
            "enqueue_single/minimal_sql_notify", "enqueue_single/minimal_sql", "jobs/s")
        row("enqueue_bulk", f"enqueue_many ({self.config.bulk_batch:,}/call) vs COPY",
            "enqueue_bulk/pgjobs", "enqueue_bulk/minimal_sql", "jobs/s")
        row("drain_minimal_claims_of_10", "  minimal SQL drain, claims of 10 vs of 100",
            "drain/minimal_sql_claims_of_10", "drain/minimal_sql_claims_of_100", "jobs/s")
        for procs in sorted({1, self.config.processes}):
            for kind in self.config.drain_kinds:
                row(f"drain_{kind}_p{procs}",
                    f"drain, {kind} handlers, {procs} process(es) vs claims of 100",
                    f"drain/pgjobs_{kind}_p{procs}", "drain/minimal_sql_claims_of_100",
                    "jobs/s")
        for p in ("p50", "p90", "p99"):
            row(f"latency_{p}", f"enqueue-commit -> handler start, {p}",
                f"latency_{p}/pgjobs", f"latency_{p}/minimal_sql", "ms", higher_is_better=False)
        return {
            "pgjobs_version": __version__,
            "server": server,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version()},
            "config": asdict(self.config),
            "seconds": round(seconds, 1),
            "results": rows,
            "runs": self.runs,
        }


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def format_table(report: dict[str, Any]) -> str:
    s = report["server"]
    lines = [
        f"PostgreSQL {s['server_version']}: synchronous_commit={s['synchronous_commit']} "
        f"fsync={s['fsync']} full_page_writes={s['full_page_writes']}; "
        f"{report['machine']['cpus']} CPUs; medians of {report['config']['rounds']} round(s)",
        "",
        f"{'scenario':<62} {'pgjobs':>11} {'minimal SQL':>12} {'ratio':>7} {'paired':>7}",
    ]
    for row in report["results"]:
        lines.append(f"{row['label']:<62} {row['pgjobs']:>11,.1f} {row['baseline']:>12,.1f} "
                     f"{row['ratio']:>7.2f} {row['ratio_paired']:>7.2f}  {row['unit']}")
    lines.append("ratio: of the medians; paired: the median of each round's own ratio")
    return "\n".join(lines)


# -- child processes (spawned: they import pgjobs afresh) --------------------------------


def _open_pools(dsn: str, size: int) -> None:
    from psycopg_pool import AsyncConnectionPool, ConnectionPool

    _POOLS["sync"] = ConnectionPool(dsn, min_size=size, max_size=size, open=True)
    _POOLS["async"] = AsyncConnectionPool(dsn, min_size=size, max_size=size, open=False)


def _drain_child(dsn: str, schema: str, kind: str, concurrency: int, ready: Any,
                 results: Any) -> None:
    from ._worker import Worker, WorkerConfig

    app = bench_app(dsn, schema)
    if kind.endswith("_tx"):
        _open_pools(dsn, concurrency)

    async def main() -> dict[str, int]:
        if kind == "async_tx":
            await _POOLS["async"].open(wait=True)
        worker = Worker(app, WorkerConfig(concurrency=concurrency, burst=True, listen=False))
        await asyncio.to_thread(ready.wait, 120)
        stats = await worker.run()
        if kind == "async_tx":
            await _POOLS["async"].close()
        return dict(stats)

    stats = asyncio.run(main())
    if kind == "sync_tx":
        _POOLS["sync"].close()
    results.put(stats)


def serve_until_stopped(app: App, concurrency: int, ready: Any, stop: Any,
                        settle: float = 0.3) -> None:
    """Run a worker of ``app`` in this process: ``ready`` is set once it has had
    ``settle`` seconds to start listening, and it stops when ``stop`` is set (both
    multiprocessing events)."""
    from ._worker import Worker, WorkerConfig

    async def main() -> None:
        worker = Worker(app, WorkerConfig(concurrency=concurrency))
        run = asyncio.create_task(worker.run())
        await asyncio.sleep(settle)
        ready.set()
        await asyncio.to_thread(stop.wait)
        worker.stop()
        await run

    asyncio.run(main())


def _latency_child_pgjobs(dsn: str, schema: str, concurrency: int, ready: Any, stop: Any,
                          results: Any) -> None:
    serve_until_stopped(bench_app(dsn, schema), concurrency, ready, stop)
    results.put(list(_STARTS))


def _latency_child_minimal(dsn: str, schema: str, concurrency: int, ready: Any, stop: Any,
                           results: Any) -> None:
    """LISTEN; on each notification claim up to ``concurrency`` jobs; a claimed row's
    arrival is its 'handler start'."""
    jobs = sql.Identifier(schema, "jobs")
    claim = sql.SQL("""
        UPDATE {jobs} SET state = 'running', lease_token = gen_random_uuid(),
               lease_expires_at = now() + interval '30 s', attempt = attempt + 1
        WHERE id IN (SELECT id FROM {jobs} WHERE state = 'available' AND queue = 'default'
                     AND run_at <= now() ORDER BY priority, run_at, id LIMIT %s
                     FOR UPDATE SKIP LOCKED)
        RETURNING id""").format(jobs=jobs)
    starts: list[tuple[int, float]] = []
    with psycopg.connect(dsn, autocommit=True) as listen, \
            psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as work:
        listen.execute(sql.SQL("LISTEN {}").format(sql.Identifier(f"pgjobs_{schema}")))
        ready.set()
        while not stop.is_set():
            for _note in listen.notifies(timeout=0.2, stop_after=1):
                while rows := work.execute(claim, (concurrency,)).fetchall():
                    now = time.time()
                    starts.extend((row[0], now) for row in rows)
    results.put(starts)


# -- entry point for the CLI --------------------------------------------------------------


def run_bench(dsn: str, config: BenchConfig, progress: TextIO | None = sys.stderr
              ) -> dict[str, Any]:
    return Bench(dsn, config, progress).run()


def dumps(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, default=str)
