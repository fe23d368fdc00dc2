"""A small production-shaped app for the deployment tests (least-privilege roles, PgBouncer):
a job that fails once and is retried, batch members with a callback, a per-key limit, a
one-second schedule and a job that completes in its own transaction. Handlers log to
`public.runs` through the app's own DSN, so they connect as whatever role (and through
whatever pooler) the worker does; prepare_threshold=None keeps them working behind
PgBouncer 1.18.
"""

from __future__ import annotations

import os

import psycopg

import pgjobs

app = pgjobs.App(schema=os.environ.get("PGJOBS_SCHEMA", "pgjobs"))

HARNESS = """
CREATE TABLE IF NOT EXISTS public.runs (
    job_id bigint NOT NULL, task text NOT NULL, attempt int NOT NULL, note text,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""


def _log(note: str | None = None) -> None:
    job = pgjobs.current_job()
    with psycopg.connect(app.dsn, autocommit=True, prepare_threshold=None) as c:
        c.execute("INSERT INTO public.runs (job_id, task, attempt, note) VALUES (%s, %s, %s, %s)",
                  (job.id, job.task, job.attempt, note))


@app.job(name="once_flaky", retry_backoff=lambda attempt: 0.0)
def once_flaky() -> int:
    """Fails its first attempt, succeeds on the retry."""
    _log()
    attempt = pgjobs.current_job().attempt
    if attempt == 1:
        raise RuntimeError("first attempt fails")
    return attempt


@app.job(name="member")
def member(n: int) -> int:
    _log()
    return n


@app.job(name="on_batch_success")
def on_batch_success() -> None:
    batch = pgjobs.current_job().batch
    _log(note=None if batch is None else f"batch {batch['id']} {batch['event']}")


@app.job(name="keyed", concurrency_limit=2)
def keyed(n: int) -> int:
    """Claimed by the limited claim (per-key limits: limit_keys)."""
    _log()
    return n


@app.job(name="fenced")
def fenced() -> None:
    """Completes inside its own transaction (current_job().complete(conn))."""
    _log()
    with psycopg.connect(app.dsn, prepare_threshold=None) as conn:
        pgjobs.current_job().complete(conn)


@app.periodic("* * * * * *", name="every_second")
@app.job(name="tick")
def tick() -> None:
    _log()
