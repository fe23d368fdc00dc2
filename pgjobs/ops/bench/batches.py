"""The batch scenario: jobs in one batch against the same jobs in none, no-op and
transactional, and the transactional jobs against raw SQL of the same shape.

    no-op          an async handler that does nothing
    transactional  a sync handler that inserts one effect row in
                   ``current_job().transaction()``: the effect and the job's success
                   commit together (the shape docs/exactly-once.md recommends)
    transactional_own  the same on a pool of the handler's own, with
                   ``current_job().complete(conn)`` before the commit
    raw SQL        ``processes`` processes x ``batch_concurrency`` threads, each looping
                   over one transaction per job on a minimal queue table: claim one row
                   with SKIP LOCKED, insert the effect row, mark the row done, commit
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import psycopg
from psycopg import sql

from .app import bench_app
from .config import BenchConfig


class Bench(Protocol):
    """What this scenario uses of the run (``runner.Bench``)."""

    dsn: str
    schema: str
    config: BenchConfig
    jobs: sql.Identifier

    def reset(self) -> None: ...
    def step(self, r: int, label: str) -> None: ...
    def record(self, name: str, value: float, unit: str) -> None: ...
    def alternate(self, r: int, pair: list[Callable[[], None]]) -> None: ...
    def drain_processes(self, kind: str, procs: int, conc: int, n: int) -> float: ...

KINDS = {"noop": "async", "transactional": "tx_effect", "transactional_own": "tx_effect_own"}

TABLES = """
CREATE TABLE IF NOT EXISTS {effects} (job_id bigint PRIMARY KEY);
CREATE TABLE IF NOT EXISTS {raw} (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    args jsonb NOT NULL DEFAULT '{{}}',
    done boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS bench_raw_todo_idx ON {raw} (id) WHERE NOT done;
CREATE TABLE IF NOT EXISTS {raw_effects} (job_id bigint PRIMARY KEY);
"""


def tables(schema: str) -> dict[str, sql.Identifier]:
    return {"effects": sql.Identifier(schema, "bench_effects"),
            "raw": sql.Identifier(schema, "bench_raw"),
            "raw_effects": sql.Identifier(schema, "bench_raw_effects")}


def measure(bench: Bench, r: int) -> None:
    with psycopg.connect(bench.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL(TABLES).format(**tables(bench.schema)))
    runs = [lambda: _raw(bench, r)]
    for shape in KINDS:
        for batched in (False, True):
            runs.append(lambda s=shape, b=batched: _pgjobs(bench, r, s, b))  # type: ignore[misc]
    bench.alternate(r, runs)


def fill(bench: Bench, task: str, n: int, batched: bool) -> None:
    """``n`` jobs of ``task``, in one batch or in none, through enqueue_many (not measured)."""
    bench.reset()
    names = tables(bench.schema)
    app = bench_app(bench.dsn, bench.schema)
    with psycopg.connect(bench.dsn) as conn:
        conn.execute(sql.SQL("TRUNCATE {}").format(names["effects"]))
        rows: list[dict[str, Any]] = [{} for _ in range(n)]
        if batched:
            app.batch(conn, description="bench").enqueue_many(app.tasks[task], rows)
        else:
            app.tasks[task].enqueue_many(conn, rows)
    with psycopg.connect(bench.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(bench.jobs))
    app.close()


def _pgjobs(bench: Bench, r: int, shape: str, batched: bool) -> None:
    cfg = bench.config
    kind, n = KINDS[shape], cfg.batch_jobs
    fill(bench, kind, n, batched)
    label = "in one batch" if batched else "without a batch"
    bench.step(r, f"batch: {shape} jobs {label}")
    elapsed = bench.drain_processes(kind, cfg.processes, cfg.batch_concurrency, n)
    if shape.startswith("transactional"):
        _check_effects(bench, "effects", n)
    bench.record(f"batch/{shape}_{'batch' if batched else 'plain'}", n / elapsed, "jobs/s")


def _raw(bench: Bench, r: int) -> None:
    cfg = bench.config
    n, names = cfg.batch_jobs, tables(bench.schema)
    with psycopg.connect(bench.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("TRUNCATE {}, {}").format(names["raw"], names["raw_effects"]))
        with conn.cursor().copy(sql.SQL("COPY {} (args) FROM STDIN").format(names["raw"])) as copy:
            for _ in range(n):
                copy.write_row(("{}",))
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(names["raw"]))
    bench.step(r, f"batch: transactional jobs, raw SQL ({cfg.processes} x "
                  f"{cfg.batch_concurrency} threads)")
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Barrier(cfg.processes + 1)
    results = ctx.Queue()
    children = [ctx.Process(target=raw_child, args=(bench.dsn, bench.schema,
                                                   cfg.batch_concurrency, ready, results),
                            daemon=True) for _ in range(cfg.processes)]
    for child in children:
        child.start()
    ready.wait(timeout=120)
    start = time.perf_counter()
    done = sum(results.get(timeout=600) for _ in children)
    elapsed = time.perf_counter() - start
    for child in children:
        child.join(30)
    if done != n:
        raise RuntimeError(f"raw SQL ran {done} of {n} jobs")
    _check_effects(bench, "raw_effects", n)
    bench.record("batch/transactional_raw_sql", n / elapsed, "jobs/s")


def _check_effects(bench: Bench, table: str, n: int) -> None:
    with psycopg.connect(bench.dsn, autocommit=True) as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            tables(bench.schema)[table])).fetchone()
    if row is None or row[0] != n:
        raise RuntimeError(f"{table}: {row and row[0]} effect rows for {n} jobs")


def raw_child(dsn: str, schema: str, threads: int, ready: Any, results: Any) -> None:
    """One process of the raw-SQL baseline: ``threads`` threads, one connection each, one
    transaction per job. Puts the number of jobs it ran on ``results``."""
    names = tables(schema)
    claim = sql.SQL("SELECT id FROM {raw} WHERE NOT done ORDER BY id LIMIT 1 "
                    "FOR UPDATE SKIP LOCKED").format(**names)
    effect = sql.SQL("INSERT INTO {raw_effects} (job_id) VALUES (%s)").format(**names)
    done = sql.SQL("UPDATE {raw} SET done = true WHERE id = %s").format(**names)
    conns = [psycopg.connect(dsn, prepare_threshold=0) for _ in range(threads)]
    counts = [0] * threads

    def loop(slot: int) -> None:
        conn = conns[slot]
        while True:
            with conn.transaction():
                row = conn.execute(claim).fetchone()
                if row is None:
                    return
                conn.execute(effect, row)
                conn.execute(done, row)
            counts[slot] += 1

    ready.wait(timeout=120)
    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    for conn in conns:
        conn.close()
    results.put(sum(counts))
