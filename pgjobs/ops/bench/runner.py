"""One ``pgjobs bench`` run: a scratch schema and the measurements taken in it, each
scenario measured beside its minimal-SQL baseline, alternating which goes first."""

from __future__ import annotations

import multiprocessing
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import psycopg
from psycopg import sql

from ...core.names import channel_for
from ...core.version import __version__
from . import batches
from .app import (
    _drain_child,
    _latency_child_minimal,
    _latency_child_pgjobs,
    _task_name,
    bench_app,
)
from .config import BenchConfig
from .report import percentile, report


class Bench:
    """One run: a scratch schema on ``dsn`` and the measurements taken in it."""

    def __init__(self, dsn: str, config: BenchConfig, progress: TextIO | None = sys.stderr):
        self.dsn = dsn
        self.config = config
        self.schema = f"pgjobs_bench_{uuid.uuid4().hex[:8]}"
        self.jobs = sql.Identifier(self.schema, "jobs")
        self.channel = channel_for(self.schema)
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
        from .. import migrate

        migrate.upgrade(self.dsn, self.schema)
        try:
            yield
        finally:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(self.schema)))

    # -- run ------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
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
        return report(self.runs, self.config, server, time.time() - started)

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
        self.record(f"drain/pgjobs_{kind}_p{procs}", n / self.drain_processes(kind, procs, conc, n),
                    "jobs/s")

    def drain_processes(self, kind: str, procs: int, conc: int, n: int) -> float:
        """Seconds ``procs`` burst workers of ``kind`` take to run the ``n`` jobs there are
        (from the moment all are ready); every job must succeed."""
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
        return elapsed

    # -- batch ------------------------------------------------------------------------------

    def batch(self, r: int) -> None:
        batches.measure(self, r)

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
