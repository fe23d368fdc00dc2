"""What the end of ``current_job().transaction()`` costs the worker: the completion and
the COMMIT pipelined in one round trip, against the two sent one after the other.

    PGJOBS_DATABASE_URL=... .venv/bin/python benchmarks/tx_completion.py --jobs 2000 --rounds 5

In a scratch schema (migrated, then dropped): ``--jobs`` jobs are claimed by hand (each
gets a lease token), then one connection runs, per job, the transaction a handler of
docs/exactly-once.md runs: an effect row, ``job_complete(id, token)``, COMMIT. Each way
is timed over every job in turn, alternating, and the medians of the rounds are printed:
the client's CPU per job (the figure that bounds a worker of transactional jobs, whose
handlers share one interpreter) and the wall time per job.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from pgjobs.db import leases
from pgjobs.db.queries import Queries
from pgjobs.ops.bench import Bench, BenchConfig

Complete = Callable[[psycopg.Connection[Any], int, str], None]


def prepare(bench: Bench, n: int) -> list[tuple[int, str]]:
    """``n`` running jobs with their lease tokens, and an empty effects table."""
    bench.fill(n, "noop")
    with psycopg.connect(bench.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (job_id bigint PRIMARY KEY)")
                     .format(sql.Identifier(bench.schema, "effects")))
        conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(bench.schema, "effects")))
        rows = conn.execute(sql.SQL(
            "UPDATE {} SET state = 'running', lease_token = gen_random_uuid(), "
            "lease_expires_at = now() + interval '1 hour', attempt = 1 "
            "RETURNING id, lease_token::text").format(bench.jobs)).fetchall()
    return sorted(rows)


def ways(q: Queries, effect: sql.Composed) -> dict[str, Complete]:
    def pipelined(conn: psycopg.Connection[Any], job_id: int, token: str) -> None:
        conn.execute(effect, (job_id,))
        query = leases.complete_commit(q, job_id, token, None)
        with conn.pipeline():
            conn.execute(query.text, query.params)
            conn.commit()

    def two_round_trips(conn: psycopg.Connection[Any], job_id: int, token: str) -> None:
        conn.execute(effect, (job_id,))
        query = leases.complete_commit(q, job_id, token, None)
        conn.execute(query.text, query.params)
        conn.commit()

    return {"pipelined": pipelined, "two round trips": two_round_trips}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    bench = Bench(os.environ["PGJOBS_DATABASE_URL"], BenchConfig(), progress=None)
    q = Queries(bench.schema)
    effect = sql.SQL("INSERT INTO {} (job_id) VALUES (%s)").format(
        sql.Identifier(bench.schema, "effects"))
    cpu: dict[str, list[float]] = {}
    wall: dict[str, list[float]] = {}
    with bench.scratch_schema(), psycopg.connect(bench.dsn) as conn:
        for r in range(args.rounds):
            order = list(ways(q, effect).items())
            for name, complete in order if r % 2 == 0 else reversed(order):
                jobs = prepare(bench, args.jobs)
                start, used = time.perf_counter(), time.process_time()
                for job_id, token in jobs:
                    complete(conn, job_id, token)
                elapsed, used = time.perf_counter() - start, time.process_time() - used
                cpu.setdefault(name, []).append(used / len(jobs) * 1e6)
                wall.setdefault(name, []).append(elapsed / len(jobs) * 1e6)
    for name in cpu:
        print(f"{name:16s} client CPU {statistics.median(cpu[name]):5.0f} us/job, "
              f"wall {statistics.median(wall[name]):6.0f} us/job "
              f"(medians of {args.rounds} rounds of {args.jobs} jobs)")


if __name__ == "__main__":
    main()
