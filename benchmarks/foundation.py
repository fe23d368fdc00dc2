"""Enqueue rates, drain throughput and enqueue-to-start latency, medians of N rounds.

    .venv/bin/python benchmarks/foundation.py [--rounds 3] [--json out.json]

Starts its own PostgreSQL (the embedded wheel, default durability: fsync and
synchronous_commit on) unless PGJOBS_BENCH_DSN names one; uses a scratch schema. Each
pgjobs figure is measured next to a minimal hand-written SQL baseline in the same run,
alternating, so the ratio is what to read on a noisy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

import pgjobs
from pgjobs import _migrate
from pgjobs._devserver import LocalServer
from pgjobs.testing import adrain

SCHEMA = "pgjobs_bench"
app = pgjobs.App(schema=SCHEMA)


@app.job(name="noop")
def noop() -> None:
    pass


@app.job(name="anoop")
async def anoop() -> None:
    pass


@app.job(name="stamp")
def stamp(sent: float) -> None:
    LATENCIES.append(time.time() - sent)


LATENCIES: list[float] = []


def reset(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(f"TRUNCATE {SCHEMA}.jobs, {SCHEMA}.workers")


def single_pgjobs(dsn: str, n: int) -> float:
    with psycopg.connect(dsn, prepare_threshold=0) as conn:
        start = time.perf_counter()
        for _ in range(n):
            noop.enqueue(conn)
            conn.commit()
        return n / (time.perf_counter() - start)


def single_minimal(dsn: str, n: int) -> float:
    query = f"INSERT INTO {SCHEMA}.jobs (queue, task, args) VALUES (%s, %s, %s) RETURNING id"
    with psycopg.connect(dsn, prepare_threshold=0) as conn:
        start = time.perf_counter()
        for _ in range(n):
            conn.execute(query, ("default", "noop", "{}")).fetchone()
            conn.commit()
        return n / (time.perf_counter() - start)


def bulk_pgjobs(dsn: str, n: int) -> float:
    rows = [{} for _ in range(n)]
    with psycopg.connect(dsn) as conn:
        start = time.perf_counter()
        noop.enqueue_many(conn, rows)
        conn.commit()
        return n / (time.perf_counter() - start)


def bulk_minimal(dsn: str, n: int) -> float:
    with psycopg.connect(dsn) as conn:
        start = time.perf_counter()
        with conn.cursor().copy(f"COPY {SCHEMA}.jobs (queue, task, args) FROM STDIN") as copy:
            for _ in range(n):
                copy.write_row(("default", "noop", "{}"))
        conn.commit()
        return n / (time.perf_counter() - start)


def drain_rate(dsn: str, n: int, task: pgjobs.Task, concurrency: int) -> float:  # type: ignore[type-arg]
    reset(dsn)
    with psycopg.connect(dsn) as conn:
        task.enqueue_many(conn, [{} for _ in range(n)])
    start = time.perf_counter()
    stats = asyncio.run(adrain(app, concurrency=concurrency))
    elapsed = time.perf_counter() - start
    assert stats["succeeded"] == n, stats
    return n / elapsed


def drain_minimal(dsn: str, n: int, batch: int) -> float:
    """Claim `batch` rows and mark them done, by hand, on two connections."""
    reset(dsn)
    with psycopg.connect(dsn) as conn:
        noop.enqueue_many(conn, [{} for _ in range(n)])
    claim = f"""
        UPDATE {SCHEMA}.jobs SET state = 'running', lease_token = gen_random_uuid(),
               lease_expires_at = now() + interval '30 s', attempt = attempt + 1
        WHERE id IN (SELECT id FROM {SCHEMA}.jobs WHERE state = 'available'
                     AND queue = 'default' AND run_at <= now()
                     ORDER BY priority, run_at, id LIMIT %s FOR UPDATE SKIP LOCKED)
        RETURNING id, lease_token"""
    done = f"""
        UPDATE {SCHEMA}.jobs SET state = 'succeeded', lease_token = NULL,
               lease_expires_at = NULL, finished_at = now()
        FROM unnest(%s::bigint[], %s::uuid[]) AS d(id, token)
        WHERE jobs.id = d.id AND jobs.lease_token = d.token"""
    total = 0
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as a, \
            psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as b:
        start = time.perf_counter()
        while True:
            rows = a.execute(claim, (batch,)).fetchall()
            if not rows:
                break
            b.execute(done, ([r[0] for r in rows], [r[1] for r in rows]))
            total += len(rows)
        elapsed = time.perf_counter() - start
    assert total == n
    return n / elapsed


def latency(dsn: str, rate: float, seconds: float) -> tuple[float, float]:
    """Enqueue-commit to handler-start, with an idle in-process worker on its own loop."""
    reset(dsn)
    LATENCIES.clear()

    async def scenario() -> None:
        worker = pgjobs.Worker(app, pgjobs.WorkerConfig(concurrency=10, poll_interval=5))
        run = asyncio.create_task(worker.run())
        await asyncio.sleep(1.0)
        await asyncio.to_thread(produce)
        await asyncio.sleep(0.5)
        worker.stop()
        await run

    def produce() -> None:
        with psycopg.connect(dsn, prepare_threshold=0) as conn:
            interval = 1.0 / rate
            next_at = time.perf_counter()
            for _ in range(int(rate * seconds)):
                stamp.enqueue(conn, sent=time.time())
                conn.commit()  # the latency is measured from (just before) this commit
                next_at += interval
                time.sleep(max(0.0, next_at - time.perf_counter()))

    asyncio.run(scenario())
    ordered = sorted(LATENCIES)
    p50 = ordered[len(ordered) // 2] * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    return p50, p99


def server_dsn() -> tuple[str, LocalServer | None]:
    if os.environ.get("PGJOBS_BENCH_DSN"):
        return os.environ["PGJOBS_BENCH_DSN"], None
    folder = Path(tempfile.mkdtemp(prefix="pgjobs-bench-"))
    server = LocalServer(folder / "data")
    return server.start(), server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--single", type=int, default=3000)
    parser.add_argument("--bulk", type=int, default=10_000)
    parser.add_argument("--drain", type=int, default=10_000)
    parser.add_argument("--json")
    args = parser.parse_args()
    dsn, server = server_dsn()
    try:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
            version = c.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
            sync = c.execute("SHOW synchronous_commit").fetchone()[0]  # type: ignore[index]
            fsync = c.execute("SHOW fsync").fetchone()[0]  # type: ignore[index]
        _migrate.upgrade(dsn, SCHEMA)
        app.config = app.config.__class__(dsn=dsn, schema=SCHEMA)
        results: dict[str, list[float]] = {}

        def record(name: str, value: float) -> None:
            results.setdefault(name, []).append(value)
            print(f"  {name}: {value:,.1f}", file=sys.stderr)

        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
            reset(dsn)
            record("enqueue_single_minimal_sql", single_minimal(dsn, args.single))
            record("enqueue_single_pgjobs", single_pgjobs(dsn, args.single))
            reset(dsn)
            record("enqueue_bulk_minimal_copy", bulk_minimal(dsn, args.bulk))
            record("enqueue_many_pgjobs", bulk_pgjobs(dsn, args.bulk))
            record("drain_minimal_sql_claims_of_10", drain_minimal(dsn, args.drain, 10))
            record("drain_pgjobs_sync_c10", drain_rate(dsn, args.drain, noop, 10))
            record("drain_pgjobs_async_c10", drain_rate(dsn, args.drain, anoop, 10))
            record("drain_minimal_sql_claims_of_100", drain_minimal(dsn, args.drain, 100))
            record("drain_pgjobs_async_c100", drain_rate(dsn, args.drain, anoop, 100))
            p50, p99 = latency(dsn, rate=50, seconds=4)
            record("latency_p50_ms_at_50_per_s", p50)
            record("latency_p99_ms_at_50_per_s", p99)
        medians = {name: statistics.median(values) for name, values in results.items()}
        report = {
            "server": {"version": version, "synchronous_commit": sync, "fsync": fsync},
            "rounds": args.rounds, "medians": medians, "runs": results,
            "ratios": {
                "single_enqueue_vs_minimal": medians["enqueue_single_pgjobs"]
                / medians["enqueue_single_minimal_sql"],
                "bulk_enqueue_vs_copy": medians["enqueue_many_pgjobs"]
                / medians["enqueue_bulk_minimal_copy"],
                "drain_c10_vs_minimal_10": medians["drain_pgjobs_async_c10"]
                / medians["drain_minimal_sql_claims_of_10"],
                "drain_c100_vs_minimal_100": medians["drain_pgjobs_async_c100"]
                / medians["drain_minimal_sql_claims_of_100"],
            },
        }
        print(json.dumps(report["server"]))
        print(f"{'measure':40} {'median':>12}")
        for name, value in medians.items():
            print(f"{name:40} {value:12,.1f}")
        for name, value in report["ratios"].items():
            print(f"{name:40} {value:12.2f}")
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
    finally:
        app.close()
        if server is not None:
            server.destroy()
            subprocess.run(["rm", "-rf", str(server.datadir.parent)], check=False)


if __name__ == "__main__":
    main()
