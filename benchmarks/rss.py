"""A worker's memory (RSS) at concurrency 100, async and sync handlers (target < 100 MB).

    PGJOBS_DATABASE_URL=... .venv/bin/python benchmarks/rss.py --jobs 20000

For each kind, a worker process (concurrency 100, burst) runs ``--jobs`` jobs that
sleep ``--sleep`` seconds, so all 100 slots (and for sync handlers, 100 threads) stay
busy; the parent samples the child's VmRSS every 0.1 s and prints its peak. Scratch
schema, dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

from pgjobs.ops.bench import Bench, BenchConfig


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(dsn: str, schema: str, concurrency: int, sleep: float, ready: Any, go: Any) -> None:
    import pgjobs
    from pgjobs import Worker, WorkerConfig

    app = pgjobs.App(dsn=dsn, schema=schema)

    @app.job(name="sleep_async")
    async def sleep_async() -> None:
        await asyncio.sleep(sleep)

    @app.job(name="sleep_sync")
    def sleep_sync() -> None:
        time.sleep(sleep)

    ready.set()
    go.wait()
    config = WorkerConfig(concurrency=concurrency, burst=True, listen=False)
    asyncio.run(Worker(app, config).run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--sleep", type=float, default=0.05)
    args = parser.parse_args()
    bench = Bench(os.environ["PGJOBS_DATABASE_URL"], BenchConfig(), progress=None)
    ctx = multiprocessing.get_context("spawn")
    with bench.scratch_schema():
        for kind in ("sleep_async", "sleep_sync"):
            bench.fill(args.jobs, kind)
            ready, go = ctx.Event(), ctx.Event()
            proc = ctx.Process(target=child, args=(bench.dsn, bench.schema, args.concurrency,
                                                   args.sleep, ready, go))
            proc.start()
            ready.wait(60)
            idle = rss_mb(proc.pid)
            go.set()
            peak, start = idle, time.perf_counter()
            while proc.is_alive():
                try:
                    peak = max(peak, rss_mb(proc.pid))
                except (FileNotFoundError, ProcessLookupError):
                    break
                time.sleep(0.1)
            proc.join()
            print(f"{kind:<12} concurrency {args.concurrency}: RSS {idle:.1f} MB after import, "
                  f"peak {peak:.1f} MB while running {args.jobs:,} jobs in "
                  f"{time.perf_counter() - start:.1f} s (target < 100 MB)", flush=True)


if __name__ == "__main__":
    main()
