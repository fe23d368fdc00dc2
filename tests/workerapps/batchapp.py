"""Tasks for the batch and unique-job tests (in-process and in worker subprocesses)."""

from __future__ import annotations

import os
import time
from datetime import timedelta

import psycopg
from psycopg.types.json import Jsonb

import pgjobs

app = pgjobs.App(schema=os.environ.get("PGJOBS_SCHEMA", "pgjobs"))

HARNESS = """
CREATE TABLE IF NOT EXISTS public.callbacks (
    batch_id bigint NOT NULL, event text NOT NULL, tag text NOT NULL,
    snapshot jsonb NOT NULL, fired_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS public.runs (
    job_id bigint NOT NULL, n int NOT NULL, attempt int NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""


def _log_run(n: int) -> None:
    job = pgjobs.current_job()
    with psycopg.connect(app.dsn, autocommit=True) as c:
        c.execute("INSERT INTO public.runs (job_id, n, attempt) VALUES (%s, %s, %s)",
                  (job.id, n, job.attempt))


@app.job(name="member", max_attempts=2, retry_backoff=lambda attempt: 0.0)
def member(n: int, fail_first: bool = False, die: bool = False, sleep: float = 0.0) -> int:
    _log_run(n)
    time.sleep(sleep)
    if die or (fail_first and pgjobs.current_job().attempt == 1):
        raise RuntimeError(f"member {n} failed")
    return n


@app.job(name="callback")
def callback(tag: str) -> None:
    job = pgjobs.current_job()
    batch = job.batch
    assert batch is not None, "a callback runs with its batch snapshot"
    with psycopg.connect(app.dsn, autocommit=True) as c:
        c.execute(
            "INSERT INTO public.callbacks (batch_id, event, tag, snapshot) "
            "VALUES (%s, %s, %s, %s)",
            (batch["id"], batch["event"], tag, Jsonb(batch)),
        )


@app.job(name="spawner")
def spawner(extra: int) -> None:
    """A batch job that adds more jobs to its own batch while it runs."""
    job = pgjobs.current_job()
    assert job.batch_id is not None
    with psycopg.connect(app.dsn) as conn:
        batch = app.batch(conn, batch_id=job.batch_id)
        batch.enqueue_many(member, [{"n": 100 + i} for i in range(extra)])


@app.job(name="unique_success", unique_for=timedelta(hours=1))
def unique_success(key: str) -> None:
    pass


@app.job(name="unique_start", unique_for=timedelta(hours=1), unique_until="start")
def unique_start(key: str) -> None:
    pass
