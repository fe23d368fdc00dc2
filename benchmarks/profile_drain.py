"""Drain pre-filled no-op jobs in this process, for a profiler to watch.

    PGJOBS_DATABASE_URL=... .venv/bin/py-spy record --format raw -o drain.txt -- \\
        .venv/bin/python benchmarks/profile_drain.py --jobs 20000 --kind async

Prints jobs/s. Uses (and drops) a scratch schema, like ``pgjobs bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

import psycopg
from psycopg import sql

from pgjobs import Worker, WorkerConfig
from pgjobs.ops.bench import Bench, BenchConfig, _open_pools, _task_name, batches, bench_app

TRACE: dict[str, list[tuple[int, float]]] = {"claim": [], "flush": []}


def trace_round_trips() -> None:
    """Wrap the claim and the outcome flush to record (rows, seconds) per round trip."""
    from pgjobs.worker.claimer import Claimer
    from pgjobs.worker.completer import Completer

    claim, flush = Claimer.claim, Completer.flush

    async def traced_claim(self: Claimer, limit: int, sweep: bool = False) -> Any:
        start = time.perf_counter()
        jobs = await claim(self, limit, sweep)
        TRACE["claim"].append((len(jobs or ()), time.perf_counter() - start))
        return jobs

    async def traced_flush(self: Completer) -> None:
        size, start = min(len(self.buffer), self.max_batch), time.perf_counter()
        await flush(self)
        TRACE["flush"].append((size, time.perf_counter() - start))

    Claimer.claim = traced_claim  # type: ignore[method-assign]
    Completer.flush = traced_flush  # type: ignore[method-assign]


def report_trace(elapsed: float) -> None:
    for name, calls in TRACE.items():
        if calls:
            rows = sum(c[0] for c in calls)
            busy = sum(c[1] for c in calls)
            print(f"  {name}: {len(calls)} round trips, {rows / len(calls):.1f} rows each, "
                  f"{busy / len(calls) * 1000:.2f} ms each, busy {busy / elapsed:.0%} of the time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--kind", default="async", choices=["sync", "async", "sync_tx",
                                                            "async_tx", "tx_effect",
                                                            "tx_effect_own"])
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--trace", action="store_true",
                        help="Count claims and outcome flushes, with their sizes and times.")
    args = parser.parse_args()
    if args.trace:
        trace_round_trips()
    bench = Bench(os.environ["PGJOBS_DATABASE_URL"], BenchConfig(), progress=None)
    with bench.scratch_schema():
        with psycopg.connect(bench.dsn, autocommit=True) as conn:  # tx_effect's table
            conn.execute(sql.SQL(batches.TABLES).format(**batches.tables(bench.schema)))
        bench.fill(args.jobs, _task_name(args.kind))
        app = bench_app(bench.dsn, bench.schema)
        if args.kind.endswith("_tx") or args.kind == "tx_effect_own":
            _open_pools(bench.dsn, args.concurrency)

        async def drain() -> dict[str, int]:
            if args.kind == "async_tx":
                from pgjobs.ops.bench import _POOLS

                await _POOLS["async"].open(wait=True)
            config = WorkerConfig(concurrency=args.concurrency, burst=True, listen=False)
            return dict(await Worker(app, config).run())

        start, cpu = time.perf_counter(), time.process_time()
        stats = asyncio.run(drain())
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"{args.kind} c{args.concurrency}: {stats} in {elapsed:.2f} s = "
          f"{args.jobs / elapsed:,.0f} jobs/s; worker CPU {cpu / elapsed:.0%} of one core, "
          f"{cpu / args.jobs * 1e6:.0f} us/job")
    report_trace(elapsed)


if __name__ == "__main__":
    main()
