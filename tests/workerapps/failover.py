"""Tasks of the failover test (tests/chaos/test_failover.py), run by `pgjobs worker`
subprocesses against a pg_auto_failover cluster's multi-host DSN.

Every handler writes its effect into ``chaos_effects`` (tests/workerapps/chaos.py) and
completes its job in the same transaction, so one row per job means exactly once: plain
jobs, batch callbacks and the ticks of a one-second schedule (``catch_up="all"``, so that
every second of the run must have exactly one tick job, failovers included).
"""

from __future__ import annotations

import os
import threading
from datetime import timedelta
from typing import Any

import psycopg

import pgjobs

from .chaos import FAST, HARNESS

app = pgjobs.App(schema=os.environ.get("PGJOBS_SCHEMA", "pgjobs"))

__all__ = ["HARNESS", "app"]

_local = threading.local()


def _connection() -> psycopg.Connection[Any]:
    conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
    if conn is None or conn.closed or conn.broken:
        conn = psycopg.connect(app.dsn, application_name="failover-effects")
        _local.conn = conn
    return conn


def write_effect() -> None:
    """Insert the effect and complete the job in one transaction. A connection that died
    with the old primary is replaced once; while no primary accepts writes the error
    fails the job, which is retried 0.2 s later (FAST)."""
    job = pgjobs.current_job()
    for last in (False, True):
        conn = _connection()
        try:
            with conn.transaction():
                conn.execute("INSERT INTO public.chaos_effects (job_id, pid) VALUES (%s, %s)",
                             (job.id, os.getpid()))
                job.complete(conn)
            return
        except psycopg.OperationalError:
            if last or not (conn.closed or conn.broken):
                raise


@app.job(name="failover.effect", **FAST)
def effect(n: int = 0) -> None:
    write_effect()


@app.job(name="failover.callback", **FAST)
def callback(tag: str) -> None:
    write_effect()


@app.periodic("* * * * * *", name="failover_tick", catch_up="all",
              catch_up_window=timedelta(minutes=10))
@app.job(name="failover.tick", **FAST)
def tick() -> None:
    write_effect()
