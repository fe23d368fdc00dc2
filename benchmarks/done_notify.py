"""The cost of revision 0009's done notification on the worker's completion flushes: the same
flushes of ``job_complete_many`` (100 outcomes, one commit each, as the completer sends
them) with the ``jobs_done_notify`` trigger enabled and disabled, alternating, on
``--connections`` connections at once (notifying commits take a cluster-wide lock, so
concurrent flushes are where it would show).

    PGJOBS_DATABASE_URL=... .venv/bin/python benchmarks/done_notify.py --jobs 20000 \\
        --rounds 5 --connections 2

Prints the wall time per 1,000 completions of each round and the medians. Uses (and
drops) a scratch schema, like ``pgjobs bench``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import sql

from pgjobs.core.outcomes import SUCCEEDED, Outcome
from pgjobs.db import leases
from pgjobs.db.queries import Queries
from pgjobs.ops.bench import Bench, BenchConfig

FLUSH = 100


def fill_and_claim(dsn: str, q: Queries, n: int) -> list[tuple[int, Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("INSERT INTO {}.jobs (task) SELECT 'bench.noop' "
                             "FROM generate_series(1, %s)").format(sql.Identifier(q.schema)),
                     (n,))
        claimed: list[tuple[int, Any]] = []
        while len(claimed) < n:
            rows = conn.execute(q.job_claim, {"queues": ["default"], "limit": 1000,
                                              "lease": timedelta(minutes=10),
                                              "worker_id": None}).fetchall()
            claimed += [(row[0], row[6]) for row in rows]
    return claimed


def complete(dsn: str, q: Queries, jobs: list[tuple[int, Any]]) -> None:
    row = leases.outcome_row(Outcome(SUCCEEDED))
    assert row is not None
    with psycopg.connect(dsn, autocommit=True) as conn:
        for start in range(0, len(jobs), FLUSH):
            chunk = jobs[start:start + FLUSH]
            leases.complete_many(q, [(i, t, row) for i, t in chunk]).run(conn)


def one_round(dsn: str, q: Queries, n: int, connections: int, notify: bool) -> float:
    table = sql.Identifier(q.schema, "jobs")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER TABLE {} {} TRIGGER jobs_done_notify").format(
            table, sql.SQL("ENABLE" if notify else "DISABLE")))
        conn.execute(sql.SQL("DELETE FROM {}").format(table))
        conn.execute(sql.SQL("VACUUM {}").format(table))
    jobs = fill_and_claim(dsn, q, n)
    parts = [jobs[i::connections] for i in range(connections)]
    threads = [threading.Thread(target=complete, args=(dsn, q, part)) for part in parts]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return (time.perf_counter() - started) / n * 1000  # seconds per 1,000 completions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=2)
    args = parser.parse_args()
    bench = Bench(os.environ["PGJOBS_DATABASE_URL"], BenchConfig(), progress=None)
    results: dict[bool, list[float]] = {True: [], False: []}
    with bench.scratch_schema():
        q = Queries(bench.schema)
        for r in range(args.rounds):
            for notify in ((True, False) if r % 2 == 0 else (False, True)):
                seconds = one_round(bench.dsn, q, args.jobs, args.connections, notify)
                results[notify].append(seconds)
                print(f"round {r + 1} notify={'on ' if notify else 'off'} "
                      f"{seconds * 1000:8.1f} ms per 1,000 completions")
    on, off = statistics.median(results[True]), statistics.median(results[False])
    print(f"median: notify on {on * 1000:.1f} ms, off {off * 1000:.1f} ms per 1,000 "
          f"completions ({on / off - 1:+.1%}; {args.connections} connection(s), flushes of "
          f"{FLUSH}, {args.jobs} jobs)")


if __name__ == "__main__":
    main()
