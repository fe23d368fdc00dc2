"""What queue controls and limits cost in drain throughput, medians of N rounds.

    .venv/bin/python benchmarks/limits.py [--rounds 3] [--jobs 5000] [--json out.json]

Each scenario drains the same number of no-op async jobs with one in-process worker
(the ordinary Worker, burst mode) and reports jobs per second. The worker picks its claim
statement as always: job_claim while none of its queues has a limit and none of its
tasks a key, job_claim_limited otherwise. Limits are set high enough never to bind, so
the difference to the unlimited baseline is the price of enforcing them; the scenarios
alternate within each round so that they see the same machine. One extra scenario runs
the claim statement as it was before limits existed, to show what the unlimited path
pays for them.

Starts its own PostgreSQL (the embedded wheel, default durability) unless
PGJOBS_BENCH_DSN names one; uses a scratch schema.
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
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg

import pgjobs
from pgjobs.db.queries import compose
from pgjobs.ops import migrate as _migrate
from pgjobs.ops.devserver import LocalServer
from pgjobs.testing import adrain

SCHEMA = "pgjobs_bench_limits"
BIG = 1_000_000
# Two apps: a worker chooses its claim statement from its app's tasks, and one with a keyed
# task always sends job_claim_limited. The unlimited scenarios must not know those tasks.
app = pgjobs.App(schema=SCHEMA)
keyed = pgjobs.App(schema=SCHEMA)


@app.job(name="plain")
async def plain(i: int = 0) -> None:
    pass


@keyed.job(name="key_per_job", concurrency_key="k{i}", concurrency_limit=BIG)
async def key_per_job(i: int) -> None:
    pass


@keyed.job(name="ten_keys", concurrency_key="g{g}", concurrency_limit=BIG)
async def ten_keys(g: int) -> None:
    pass


@keyed.job(name="ten_keys_rated", concurrency_key="r{g}", rate_limit=BIG,
           rate_period=timedelta(seconds=1))
async def ten_keys_rated(g: int) -> None:
    pass


# The claim statement of revision 0001 (before pause and limits), for comparison.
CLAIM_BEFORE = """
WITH candidates AS (
    SELECT j.id
    FROM unnest(%(queues)s::text[]) AS q(name)
    CROSS JOIN LATERAL (
        SELECT id, priority, run_at
        FROM {schema}.jobs
        WHERE queue = q.name AND state = 'available' AND run_at <= now()
          AND (expires_at IS NULL OR expires_at > now())
        ORDER BY priority, run_at, id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) j
    ORDER BY j.priority, j.run_at, j.id
    LIMIT %(limit)s
)
UPDATE {schema}.jobs AS job
SET state = 'running', attempt = job.attempt + 1, lease_token = gen_random_uuid(),
    lease_expires_at = clock_timestamp() + %(lease)s::interval,
    worker_id = %(worker_id)s, started_at = clock_timestamp()
FROM candidates
WHERE job.id = candidates.id
RETURNING job.id, job.task, job.queue, job.args, job.attempt, job.max_attempts,
          job.lease_token, job.recoveries, job.batch_id
"""


def sql(dsn: str, text: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(text.replace("{schema}", SCHEMA))


def reset(dsn: str, queue_row: str | None = None) -> None:
    sql(dsn, "TRUNCATE {schema}.jobs, {schema}.workers, {schema}.queues, {schema}.limit_keys")
    if queue_row:
        sql(dsn, f"INSERT INTO {{schema}}.queues (name, {queue_row})")


def drain(dsn: str, task: pgjobs.Task[..., Any], rows: list[dict[str, Any]],
          concurrency: int) -> float:
    with psycopg.connect(dsn) as conn:
        task.enqueue_many(conn, rows)
    start = time.perf_counter()
    stats = asyncio.run(adrain(task.app, concurrency=concurrency))
    elapsed = time.perf_counter() - start
    assert stats["succeeded"] == len(rows), stats
    return len(rows) / elapsed


def scenarios(n: int, concurrency: int) -> dict[str, Callable[[str], float]]:
    numbered = [{"i": i} for i in range(n)]
    grouped = [{"g": i % 10} for i in range(n)]

    def run(task: pgjobs.Task[..., Any], rows: list[dict[str, Any]],
            queue_row: str | None = None) -> Callable[[str], float]:
        def go(dsn: str) -> float:
            reset(dsn, queue_row)
            return drain(dsn, task, rows, concurrency)
        return go

    def before(dsn: str) -> float:
        queries = app.queries
        original = queries.job_claim
        queries.job_claim = compose(CLAIM_BEFORE, SCHEMA)
        try:
            reset(dsn)
            return drain(dsn, plain, numbered, concurrency)
        finally:
            queries.job_claim = original

    return {
        "no limit (claim of revision 0001)": before,
        "no limit": run(plain, numbered),
        "queue row, paused = false": run(plain, numbered, "paused) VALUES ('default', false"),
        "queue concurrency limit": run(
            plain, numbered, f"concurrency_limit) VALUES ('default', {BIG}"),
        "queue rate limit (per 1 s)": run(
            plain, numbered, f"rate_limit, rate_period) VALUES ('default', {BIG}, '1 s'"),
        "key concurrency, a key per job": run(key_per_job, numbered),
        "key concurrency, 10 keys": run(ten_keys, grouped),
        "key rate limit (per 1 s), 10 keys": run(ten_keys_rated, grouped),
    }


def server_dsn() -> tuple[str, LocalServer | None]:
    if os.environ.get("PGJOBS_BENCH_DSN"):
        return os.environ["PGJOBS_BENCH_DSN"], None
    folder = Path(tempfile.mkdtemp(prefix="pgjobs-bench-"))
    server = LocalServer(folder / "data")
    return server.start(), server


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--json")
    args = parser.parse_args()
    dsn, server = server_dsn()
    try:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
            version = c.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        _migrate.upgrade(dsn, SCHEMA)
        for application in (app, keyed):
            application.config = replace(application.config, dsn=dsn)
        runs: dict[str, list[float]] = {}
        todo = scenarios(args.jobs, args.concurrency)
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
            for name, go in todo.items():
                rate = go(dsn)
                runs.setdefault(name, []).append(rate)
                print(f"  {name}: {rate:,.0f} jobs/s", file=sys.stderr)
        medians = {name: statistics.median(values) for name, values in runs.items()}
        # Each scenario against the unlimited one of the same round, then the median:
        # on a shared machine the load drifts between rounds more than within one.
        ratios = {name: statistics.median(v / b for v, b in zip(values, runs["no limit"],
                                                                strict=True))
                  for name, values in runs.items()}
        print(f"PostgreSQL {version}; {args.jobs} no-op async jobs, one worker, "
              f"concurrency {args.concurrency}; medians of {args.rounds}")
        print(f"{'scenario':40} {'jobs/s':>10} {'vs no limit, same round':>24}")
        for name, value in medians.items():
            print(f"{name:40} {value:10,.0f} {ratios[name] - 1:+24.1%}")
        if args.json:
            Path(args.json).write_text(json.dumps(
                {"server_version": version, "jobs": args.jobs, "rounds": args.rounds,
                 "concurrency": args.concurrency, "medians": medians,
                 "ratios_to_no_limit": ratios, "runs": runs}, indent=2))
    finally:
        app.close()
        keyed.close()
        if server is not None:
            server.destroy()
            subprocess.run(["rm", "-rf", str(server.datadir.parent)], check=False)


if __name__ == "__main__":
    main()
