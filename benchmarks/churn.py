"""Dead tuples and index sizes while jobs stream through for a while.

    PGJOBS_DATABASE_URL=... .venv/bin/python benchmarks/churn.py --seconds 600 --rate 500

A producer enqueues ``--rate`` no-op jobs per second (batches of 10, one transaction
each) while a worker (concurrency 10) runs them; every ``--every`` seconds it prints the
jobs table's live and dead tuples, autovacuum runs and the size of each relation. What
should stay bounded: dead tuples and jobs_claim_idx (available rows only); and, with retention on
(``--retention``, seconds a succeeded job is kept, 60 by default), every relation: the
heap, the primary key and jobs_finished_state_idx hold one row per job finished within
the retention period, and the space of pruned rows is reused. ``--retention 0`` keeps
finished jobs forever (the heap then grows by one row per job). Scratch schema, dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time

import psycopg

from pgjobs import Worker, WorkerConfig
from pgjobs.ops.bench import Bench, BenchConfig, bench_app

STATS = """
SELECT s.n_live_tup, s.n_dead_tup, s.autovacuum_count, s.autoanalyze_count,
       pg_relation_size(%(jobs)s::regclass),
       pg_relation_size(%(claim)s::regclass), pg_relation_size(%(pkey)s::regclass),
       pg_indexes_size(%(jobs)s::regclass),
       (SELECT count(*) FROM {jobs} WHERE state = 'available')
FROM pg_stat_user_tables s WHERE s.relid = %(jobs)s::regclass
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--every", type=float, default=10)
    parser.add_argument("--retention", type=float, default=60,
                        help="Seconds succeeded jobs are kept (0: forever).")
    args = parser.parse_args()
    bench = Bench(os.environ["PGJOBS_DATABASE_URL"], BenchConfig(), progress=None)
    with bench.scratch_schema():
        app = bench_app(bench.dsn, bench.schema)
        names = {k: f"{bench.schema}.{v}" for k, v in
                 (("jobs", "jobs"), ("claim", "jobs_claim_idx"), ("pkey", "jobs_pkey"))}
        stop = threading.Event()
        enqueued = 0

        def produce() -> None:
            nonlocal enqueued
            task = app.tasks["async"]
            with psycopg.connect(bench.dsn, prepare_threshold=0) as conn:
                next_at = time.perf_counter()
                while not stop.is_set():
                    task.enqueue_many(conn, [{}] * 10)
                    conn.commit()
                    enqueued += 10
                    next_at += 10 / args.rate
                    time.sleep(max(0.0, next_at - time.perf_counter()))

        def sample(started: float) -> None:
            mb = 1024 * 1024
            print(f"{'s':>5} {'enqueued':>9} {'live':>9} {'dead':>8} {'autovac':>7} "
                  f"{'available':>9} {'heap MB':>8} {'claim_idx MB':>12} {'pkey MB':>8} "
                  f"{'indexes MB':>10}", flush=True)
            with psycopg.connect(bench.dsn, autocommit=True) as conn:
                query = bench.q(STATS)
                while not stop.wait(args.every):
                    live, dead, vac, _an, heap, claim, pkey, indexes, avail = conn.execute(
                        query, names).fetchone()  # type: ignore[misc]
                    print(f"{time.perf_counter() - started:>5.0f} {enqueued:>9,} {live:>9,} "
                          f"{dead:>8,} {vac:>7} {avail:>9,} {heap / mb:>8.1f} "
                          f"{claim / mb:>12.2f} {pkey / mb:>8.1f} {indexes / mb:>10.1f}",
                          flush=True)

        async def work() -> None:
            worker = Worker(app, WorkerConfig(
                concurrency=10, retention_succeeded=args.retention or None))
            run = asyncio.create_task(worker.run())
            await asyncio.sleep(args.seconds)
            worker.stop()
            await run

        started = time.perf_counter()
        threads = [threading.Thread(target=produce), threading.Thread(
            target=sample, args=(started,))]
        for t in threads:
            t.start()
        try:
            asyncio.run(work())
        finally:
            stop.set()
            for t in threads:
                t.join()


if __name__ == "__main__":
    main()
