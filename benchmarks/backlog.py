"""Drain throughput at the head of a large backlog vs a queue holding only the jobs run.

    PGJOBS_DATABASE_URL=... .venv/bin/python benchmarks/backlog.py \\
        --backlog 1000000 --jobs 20000 --rounds 3

Each round, alternating: (a) ``--jobs`` jobs in an otherwise empty queue, drained; (b)
``--backlog`` jobs, of which the worker runs the first ``--jobs`` and stops. The claim
walks jobs_claim_idx per queue and stops after LIMIT rows, so (b) should run at >= 80%
of (a). Also prints the claim's plan over the backlog, to show it reads only the head
of the index (no Sort over the backlog, a handful of buffers). Scratch schema, dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from datetime import timedelta

import psycopg
from psycopg import sql

from pgjobs import Worker, WorkerConfig
from pgjobs.ops.bench import Bench, BenchConfig, bench_app


def run(bench: Bench, jobs: int, concurrency: int) -> float:
    """Run ``jobs`` no-op jobs from the head of whatever is queued; return jobs/s."""
    app = bench_app(bench.dsn, bench.schema)
    worker = Worker(app, WorkerConfig(concurrency=concurrency, listen=False))
    done = 0

    @app.job(name="counted")
    async def counted() -> None:
        nonlocal done
        done += 1
        if done == jobs:
            worker.stop()

    start = time.perf_counter()
    stats = asyncio.run(worker.run())
    elapsed = time.perf_counter() - start
    if stats["succeeded"] != jobs:
        raise RuntimeError(f"ran {dict(stats)}, expected {jobs} succeeded")
    return jobs / elapsed


def plan(bench: Bench) -> str:
    from pgjobs.db.queries import Queries

    query = Queries(bench.schema).job_claim
    params = {"queues": ["default"], "limit": 110, "lease": timedelta(seconds=30),
              "worker_id": None}
    with psycopg.connect(bench.dsn) as conn:
        rows = conn.execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) ") + query,
                            params).fetchall()
        conn.rollback()  # the EXPLAIN ANALYZE claimed them: put them back
    return "\n".join(row[0] for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    bench = Bench(os.environ["PGJOBS_DATABASE_URL"], BenchConfig(), progress=None)
    rates: dict[str, list[float]] = {"empty": [], "backlog": []}
    with bench.scratch_schema():
        for r in range(args.rounds):
            for case in ("empty", "backlog") if r % 2 == 0 else ("backlog", "empty"):
                bench.fill(args.jobs if case == "empty" else args.backlog, "counted")
                if case == "backlog" and r == 0:
                    print(f"claim plan over a backlog of {args.backlog:,}:\n{plan(bench)}\n")
                rate = run(bench, args.jobs, args.concurrency)
                rates[case].append(rate)
                print(f"round {r + 1} {case:<8} {rate:>9,.0f} jobs/s", flush=True)
    empty, backlog = (statistics.median(rates[c]) for c in ("empty", "backlog"))
    print(f"\nmedian: empty queue {empty:,.0f} jobs/s; head of a {args.backlog:,} backlog "
          f"{backlog:,.0f} jobs/s = {backlog / empty:.0%} (target >= 80%)")


if __name__ == "__main__":
    main()
