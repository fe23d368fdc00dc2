"""Where enqueue-to-start latency goes, step by step, for one idle worker.

    PGJOBS_DATABASE_URL=... .venv/bin/python benchmarks/latency_breakdown.py \\
        --jobs 250 --rate 50 --handler async

A producer enqueues one job per transaction at ``--rate``; a worker in another process
runs it. Each job's path is timed (wall clock, one machine) in four steps: the
producer's commit returning -> the worker's LISTEN task waking the claim loop -> the
claim sent -> the claim's rows back -> the handler starting. Prints p50/p90/p99 of each
step and of the total. The claimer's ``poke`` and ``claim`` are wrapped to read the
clock, which adds a few microseconds. Scratch schema, dropped.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from typing import Any

import psycopg

import pgjobs
from pgjobs.ops.bench import Bench, BenchConfig, percentile, serve_until_stopped
from pgjobs.worker.claimer import Claimer

STEPS = ("commit -> wake", "wake -> claim sent", "claim round trip", "claim -> handler",
         "total")


def worker_process(dsn: str, schema: str, handler: str, ready: Any, stop: Any,
                   out: Any) -> None:
    app = pgjobs.App(dsn=dsn, schema=schema)
    starts: dict[int, float] = {}
    if handler == "async":
        @app.job(name="stamp")
        async def stamp_async() -> None:
            starts[pgjobs.current_job().id] = time.time()
    else:
        @app.job(name="stamp")
        def stamp() -> None:
            starts[pgjobs.current_job().id] = time.time()

    wakes: list[float] = []
    claims: list[tuple[float, float, list[int]]] = []
    poke, claim = Claimer.poke, Claimer.claim

    def timed_poke(self: Claimer) -> None:
        wakes.append(time.time())
        poke(self)

    async def timed_claim(self: Claimer, limit: int, sweep: bool = False) -> Any:
        sent = time.time()
        jobs = await claim(self, limit, sweep)
        claims.append((sent, time.time(), [job.id for job in jobs or []]))
        return jobs

    Claimer.poke, Claimer.claim = timed_poke, timed_claim  # type: ignore[method-assign]
    serve_until_stopped(app, 10, ready, stop, settle=0.5)
    out.put((starts, wakes, claims))


def breakdown(committed: dict[int, float], starts: dict[int, float], wakes: list[float],
              claims: list[tuple[float, float, list[int]]]) -> list[tuple[float, ...]]:
    """Each job's steps in ms: the first wake after its commit (a notification can land
    a little before the producer reads its clock), and the claim that returned it."""
    rows = []
    for job_id, done in committed.items():
        wake = min((t for t in wakes if t >= done - 0.002), default=None)
        claim = next(((sent, back) for sent, back, ids in claims if job_id in ids), None)
        if wake is None or claim is None or job_id not in starts:
            continue
        sent, back = claim
        start = starts[job_id]
        rows.append(((wake - done) * 1e3, (sent - wake) * 1e3, (back - sent) * 1e3,
                     (start - back) * 1e3, (start - done) * 1e3))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=250)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--handler", choices=("sync", "async"), default="async")
    args = parser.parse_args()
    bench = Bench(os.environ["PGJOBS_DATABASE_URL"], BenchConfig(), progress=None)
    ctx = multiprocessing.get_context("spawn")
    with bench.scratch_schema():
        ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
        child = ctx.Process(target=worker_process, args=(
            bench.dsn, bench.schema, args.handler, ready, stop, out), daemon=True)
        child.start()
        ready.wait(60)
        time.sleep(0.5)
        task = pgjobs.App(dsn=bench.dsn, schema=bench.schema).task("stamp")
        committed: dict[int, float] = {}
        with psycopg.connect(bench.dsn, prepare_threshold=0) as conn:
            next_at = time.perf_counter()
            for _ in range(args.jobs):
                job_id = task.enqueue(conn).id
                conn.commit()
                committed[job_id] = time.time()
                next_at += 1.0 / args.rate
                time.sleep(max(0.0, next_at - time.perf_counter()))
        time.sleep(0.5)
        stop.set()
        starts, wakes, claims = out.get(timeout=60)
        child.join(30)
    rows = breakdown(committed, starts, wakes, claims)
    print(f"{len(rows)} of {args.jobs} jobs timed, {args.handler} handler, {args.rate:g}/s")
    for i, step in enumerate(STEPS):
        values = sorted(row[i] for row in rows)
        print(f"{step:<20} p50 {percentile(values, 0.5):6.2f}  p90 {percentile(values, 0.9):6.2f}"
              f"  p99 {percentile(values, 0.99):6.2f} ms")


if __name__ == "__main__":
    main()
