"""Compare the server time of ``job_complete_many`` at another commit with this tree's, on
flushes of outcomes that take the long statement (successes with a result), alternating,
medians; then show that the unknown-task subquery (revision 0012) runs only for the rows
that need it.

    PGJOBS_DATABASE_URL=... .venv/bin/python benchmarks/ab_complete_many.py 85d548c \\
        --rounds 40 --rows 200

The database must be migrated to this tree's revision; the jobs it inserts (queue
``bench``) are deleted at the end. Times include one round trip (the same for both).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pgjobs.db.leases import Row, outcomes_param
from pgjobs.db.sql import leases

ROOT = Path(__file__).resolve().parent.parent
RESULT: Row = ("succeeded", 0.0, 0, None, "1", None, 0)
UNKNOWN: Row = ("unknown_task", 5.0, 1, None, None, None, 0)


def statement_at(commit: str) -> str:
    """``job_complete_many``'s text at ``commit``."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:pgjobs/db/sql/leases.py"],
                            check=True, capture_output=True, text=True).stdout
    namespace: dict[str, Any] = {}
    exec(compile(source, "leases.py", "exec"), namespace)  # our own source, at a commit
    return str(namespace["job_complete_many"])


def running_jobs(conn: psycopg.Connection[Any], rows: int) -> list[tuple[int, Any]]:
    """``rows`` running jobs of queue ``bench``: (id, lease token)."""
    with conn.transaction():
        return [(r[0], r[1]) for r in conn.execute(
            "INSERT INTO pgjobs.jobs (queue, task, args, state, attempt, lease_token, "
            "lease_expires_at, started_at) SELECT 'bench', 'noop', '{}', 'running', 1, "
            "gen_random_uuid(), now() + interval '1 minute', now() "
            "FROM generate_series(1, %s) RETURNING id, lease_token", (rows,)).fetchall()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", help="the commit to compare with (e.g. main)")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--rows", type=int, default=200)
    args = parser.parse_args()
    schema = sql.Identifier("pgjobs")
    texts = {"before": statement_at(args.before), "after": leases.job_complete_many}
    statements = {name: sql.SQL(text).format(schema=schema) for name, text in texts.items()}
    micros: dict[str, list[float]] = {name: [] for name in statements}
    with psycopg.connect(os.environ["PGJOBS_DATABASE_URL"], autocommit=True) as conn:
        for round_ in range(args.rounds):
            for name in ("before", "after") if round_ % 2 else ("after", "before"):
                writes = [(i, token, RESULT) for i, token in running_jobs(conn, args.rows)]
                params = outcomes_param(writes, None, 3600.0)
                if "unknown_task_grace" not in texts[name]:
                    del params["unknown_task_grace"]
                start = time.perf_counter()
                written = conn.execute(statements[name], params).fetchall()
                micros[name].append((time.perf_counter() - start) * 1e6 / args.rows)
                assert len(written) == args.rows
        for name, values in micros.items():
            print(f"{name}: median {statistics.median(values):.1f} us/row "
                  f"({args.rounds} flushes of {args.rows})")
        # One unknown_task row among plain results: its subquery runs once, for it alone.
        jobs = running_jobs(conn, args.rows)
        writes = [(i, token, UNKNOWN if n == 0 else RESULT) for n, (i, token) in enumerate(jobs)]
        plan = conn.execute(sql.SQL("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) ")
                            + statements["after"], outcomes_param(writes, None, 3600.0))
        lines = [r[0] for r in plan.fetchall()]
        probe = next(line for line in lines if "on tasks t" in line)
        print(f"unknown-task subquery, 1 such row of {args.rows}: {probe.strip()}")
        conn.execute("DELETE FROM pgjobs.jobs WHERE queue = 'bench'")


if __name__ == "__main__":
    main()
