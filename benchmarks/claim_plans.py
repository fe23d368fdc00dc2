"""The claim statements under PostgreSQL's plan cache: its own choice, and forced generic.

    PGJOBS_DATABASE_URL=... .venv/bin/python benchmarks/claim_plans.py --claims 100 --rounds 3

For each claim statement and each ``plan_cache_mode`` (``auto``, the default, and
``force_generic_plan``, which the worker's claim connection sets), alternating: a job is
enqueued and claimed, ``--claims`` times on one prepared connection. Prints the median
claim time and how many generic and custom plans ``pg_prepared_statements`` counted. A
statement the plan cache keeps replanning shows only custom plans and the planning
time in every claim. Scratch schema, dropped.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import timedelta

import psycopg

from pgjobs.ops.bench import Bench, BenchConfig, bench_app

STATEMENTS = ("job_claim", "job_claim_limited")
MODES = ("auto", "force_generic_plan")


def claim_times(bench: Bench, statement: str, mode: str, claims: int
                ) -> tuple[float, int, int]:
    app = bench_app(bench.dsn, bench.schema)
    query = getattr(app.queries, statement)
    params = {"queues": ["default"], "limit": 10, "lease": timedelta(seconds=30),
              "worker_id": None}
    times = []
    with psycopg.connect(bench.dsn) as producer, \
            psycopg.connect(bench.dsn, autocommit=True, prepare_threshold=0) as conn:
        conn.execute(f"SET plan_cache_mode = {mode}")
        for _ in range(claims):
            app.task("noop").enqueue(producer)
            producer.commit()
            start = time.perf_counter()
            rows = conn.execute(query, params).fetchall()
            times.append(time.perf_counter() - start)
            if len(rows) != 1:
                raise RuntimeError(f"{statement} claimed {len(rows)} jobs, expected 1")
        row = conn.execute("SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                           "WHERE position('WITH settings' in statement) > 0 "
                           "ORDER BY generic_plans + custom_plans DESC LIMIT 1").fetchone()
    assert row is not None
    return statistics.median(times), int(row[0]), int(row[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claims", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    bench = Bench(os.environ["PGJOBS_DATABASE_URL"], BenchConfig(), progress=None)
    results: dict[tuple[str, str], list[tuple[float, int, int]]] = {}
    with bench.scratch_schema():
        for r in range(args.rounds):
            for statement in STATEMENTS:
                for mode in MODES if r % 2 == 0 else reversed(MODES):
                    results.setdefault((statement, mode), []).append(
                        claim_times(bench, statement, mode, args.claims))
    print(f"{'statement':<18} {'plan_cache_mode':<19} {'ms/claim':>8}  generic/custom plans")
    for (statement, mode), runs in results.items():
        ms = statistics.median(t for t, _, _ in runs) * 1e3
        plans = ", ".join(f"{g}/{c}" for _, g, c in runs)
        print(f"{statement:<18} {mode:<19} {ms:8.2f}  {plans}")


if __name__ == "__main__":
    main()
