"""What one statement on ``jobs`` costs the server, against a minimal table: the figures
behind docs/benchmarks.md, "What stands in the way".

    PGJOBS_DATABASE_URL=... .venv/bin/python benchmarks/statement_costs.py --rounds 3

In a scratch schema (migrated, then dropped), all on the server, no round trips:
- single-row INSERTs in a PL/pgSQL loop (one statement per row) into the minimal table,
  into copies of ``jobs`` without constraints or indexes, with its CHECK constraints only,
  and with everything, and into ``jobs`` itself; then the CHECK copy again with all rows
  in one statement (per-statement against per-row cost);
- COPY of the same three columns (queue, task, args), 1,000 rows per call, into the
  minimal table and into ``jobs``;
- the done notification's trigger: 35-row UPDATEs to ``succeeded`` of jobs nobody waits
  for and of jobs marked ``done_waited`` (the trigger fires only for those).
Prints medians in microseconds per row (COPY: rows per second).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid

import psycopg
from psycopg import sql

from pgjobs.ops import migrate

ROWS = 3000


def loop(conn: psycopg.Connection[object], table: str, rows: int = ROWS) -> float:
    """Microseconds per single-row INSERT into ``table`` (a PL/pgSQL loop), rolled back."""
    conn.execute(sql.SQL("""
        DO $$ DECLARE t0 timestamptz := clock_timestamp(); BEGIN
            FOR i IN 1..{rows} LOOP
                INSERT INTO {table} (queue, task, args) VALUES ('default', 'noop', '{{}}');
            END LOOP;
            PERFORM set_config('bench.us', (extract(epoch FROM clock_timestamp() - t0)
                                            * 1e6 / {rows})::text, true);
        END $$""").format(rows=sql.Literal(rows), table=sql.SQL(table)))
    return float(conn.execute("SELECT current_setting('bench.us')").fetchone()[0])  # type: ignore[index]


def one_statement(conn: psycopg.Connection[object], table: str) -> float:
    """Microseconds per row of one INSERT of ROWS rows."""
    start = time.perf_counter()
    conn.execute(sql.SQL("INSERT INTO {} (queue, task, args) SELECT 'default', 'noop', '{{}}' "
                         "FROM generate_series(1, %s)").format(sql.SQL(table)), (ROWS,))
    return (time.perf_counter() - start) * 1e6 / ROWS


def copy_rate(conn: psycopg.Connection[object], table: str) -> float:
    """Rows per second of a committed 1,000-row COPY of (queue, task, args)."""
    start = time.perf_counter()
    with conn.cursor().copy(sql.SQL("COPY {} (queue, task, args) FROM STDIN").format(
            sql.SQL(table))) as copy:
        for _ in range(1000):
            copy.write_row(("default", "noop", "{}"))
    conn.commit()
    return 1000 / (time.perf_counter() - start)


def finish(conn: psycopg.Connection[object], schema: str, waited: bool) -> float:
    """Microseconds per job of 35-row UPDATEs to succeeded (PL/pgSQL), rolled back."""
    first = conn.execute(sql.SQL(
        "WITH new AS (INSERT INTO {}.jobs (task, state, lease_token, lease_expires_at, "
        "done_waited) SELECT 'noop', 'running', gen_random_uuid(), now() + interval '1 h', "
        "%s FROM generate_series(1, 17500) RETURNING id) SELECT min(id) FROM new").format(
            sql.Identifier(schema)), (waited,)).fetchone()[0]  # type: ignore[index]
    conn.execute(sql.SQL("""
        DO $$ DECLARE t0 timestamptz := clock_timestamp(); BEGIN
            FOR i IN 0..499 LOOP
                UPDATE {jobs} SET state = 'succeeded', lease_token = NULL,
                       lease_expires_at = NULL, finished_at = now()
                WHERE id >= {first} + i * 35 AND id < {first} + i * 35 + 35;
            END LOOP;
            PERFORM set_config('bench.us', (extract(epoch FROM clock_timestamp() - t0)
                                            * 1e6 / 17500)::text, true);
        END $$""").format(jobs=sql.Identifier(schema, "jobs"), first=sql.Literal(first)))
    us = float(conn.execute("SELECT current_setting('bench.us')").fetchone()[0])  # type: ignore[index]
    done = conn.execute(sql.SQL(
        "SELECT count(*) FROM {}.jobs WHERE state = 'succeeded' AND task = 'noop' "
        "AND finished_at IS NOT NULL").format(sql.Identifier(schema))).fetchone()[0]  # type: ignore[index]
    assert done == 17500, f"{done} of 17500 jobs finished"
    conn.rollback()
    return us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    dsn = os.environ["PGJOBS_DATABASE_URL"]
    schema = f"pgjobs_stmt_{uuid.uuid4().hex[:8]}"
    migrate.upgrade(dsn, schema)
    jobs = f'"{schema}".jobs'
    results: dict[str, list[float]] = {}
    try:
        with psycopg.connect(dsn) as conn:
            conn.execute(sql.SQL(
                "CREATE TABLE {s}.minimal (id bigserial PRIMARY KEY, queue text NOT NULL, "
                "task text NOT NULL, args jsonb NOT NULL DEFAULT '{{}}', claimed boolean "
                "NOT NULL DEFAULT false); CREATE INDEX ON {s}.minimal (id) WHERE NOT claimed; "
                "CREATE TABLE {s}.bare (LIKE {s}.jobs INCLUDING DEFAULTS INCLUDING IDENTITY); "
                "CREATE TABLE {s}.checked (LIKE {s}.jobs INCLUDING DEFAULTS INCLUDING "
                "IDENTITY INCLUDING CONSTRAINTS); "
                "CREATE TABLE {s}.full_copy (LIKE {s}.jobs INCLUDING ALL)").format(
                    s=sql.Identifier(schema)))
            conn.commit()
            tables = {"minimal table": f'"{schema}".minimal',
                      "jobs copy, no constraints or indexes": f'"{schema}".bare',
                      "jobs copy, CHECK constraints only": f'"{schema}".checked',
                      "jobs copy, constraints and indexes": f'"{schema}".full_copy',
                      "jobs itself (triggers, foreign key)": jobs}
            for _ in range(args.rounds):
                for name, table in tables.items():
                    results.setdefault(f"single-row INSERT, {name}", []).append(
                        loop(conn, table))
                    conn.rollback()
                results.setdefault("one 3,000-row INSERT, CHECK constraints only",
                                   []).append(one_statement(conn, tables[
                                       "jobs copy, CHECK constraints only"]))
                conn.rollback()
                for name, table in (("minimal table", tables["minimal table"]),
                                    ("jobs", jobs)):
                    results.setdefault(f"COPY 1,000 rows/call into {name} (rows/s)",
                                       []).append(copy_rate(conn, table))
                for waited in (False, True):
                    results.setdefault(
                        f"finish, 35 rows/UPDATE, {'waited for' if waited else 'not waited'}",
                        []).append(finish(conn, schema, waited))
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    for name, values in results.items():
        unit = "" if "rows/s" in name else " us/row"
        print(f"{name:<58} {statistics.median(values):>10,.1f}{unit}")


if __name__ == "__main__":
    main()
