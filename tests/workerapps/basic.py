"""Tasks used by the worker tests, in-process and in `pgjobs worker` subprocesses.

Handlers log each execution to `attempts` on a separate autocommit connection (it counts
runs, including ones whose transaction rolled back) and write `effects` in the job's own
transaction with current_job().complete(conn) (one row per job = exactly once).
"""

from __future__ import annotations

import asyncio
import os
import time

import psycopg

import pgjobs

app = pgjobs.App(schema=os.environ.get("PGJOBS_SCHEMA", "pgjobs"))

HARNESS = """
CREATE TABLE IF NOT EXISTS public.attempts (
    job_id bigint NOT NULL, attempt int NOT NULL, pid int NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(), finished_at timestamptz,
    note text
);
CREATE TABLE IF NOT EXISTS public.effects (job_id bigint PRIMARY KEY, pid int NOT NULL);
"""


def record_attempt(note: str | None = None) -> None:
    job = pgjobs.current_job()
    with psycopg.connect(app.dsn, autocommit=True) as c:
        c.execute(
            "INSERT INTO public.attempts (job_id, attempt, pid, note) VALUES (%s, %s, %s, %s)",
            (job.id, job.attempt, os.getpid(), note),
        )


def record_finish() -> None:
    job = pgjobs.current_job()
    with psycopg.connect(app.dsn, autocommit=True) as c:
        c.execute(
            "UPDATE public.attempts SET finished_at = clock_timestamp() "
            "WHERE job_id = %s AND pid = %s AND finished_at IS NULL",
            (job.id, os.getpid()),
        )


@app.job(name="noop")
def noop() -> None:
    pass


@app.job(name="double")
def double(x: int) -> int:
    return x * 2


@app.job(name="async_echo")
async def async_echo(value: str) -> dict[str, str]:
    await asyncio.sleep(0)
    return {"echo": value}


@app.job(name="effect")
def effect(sleep: float = 0.0) -> None:
    """Exactly-once effect: sleep (a crash window), then write and complete in one tx."""
    record_attempt()
    deadline = time.monotonic() + sleep
    while time.monotonic() < deadline:
        time.sleep(0.05)
    with psycopg.connect(app.dsn) as conn:
        conn.execute(
            "INSERT INTO public.effects (job_id, pid) VALUES (%s, %s)",
            (pgjobs.current_job().id, os.getpid()),
        )
        pgjobs.current_job().complete(conn)
    record_finish()


@app.job(name="busy")
def busy(seconds: float) -> str:
    """A sync job that works for `seconds` and stops early when asked."""
    record_attempt()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pgjobs.current_job().should_stop:
            record_finish()
            return "stopped"
        time.sleep(0.02)
    record_finish()
    return "done"


@app.job(name="async_busy")
async def async_busy(seconds: float) -> str:
    record_attempt()
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        record_finish()
        raise
    record_finish()
    return "done"


@app.job(name="stubborn")
def stubborn(seconds: float) -> None:
    """Ignores should_stop: only a hard exit ends it early."""
    record_attempt()
    time.sleep(seconds)
    record_finish()


@app.job(name="fail", max_attempts=3, retry_backoff=lambda attempt: 0.0)
def fail(message: str = "boom") -> None:
    raise ValueError(message)


@app.job(name="flaky", retry_backoff=lambda attempt: 0.0)
def flaky(fail_times: int) -> int:
    attempt = pgjobs.current_job().attempt
    if attempt <= fail_times:
        raise RuntimeError(f"flaky failure {attempt}")
    return attempt


@app.job(name="retry_later")
def retry_later(seconds: float) -> None:
    raise pgjobs.Retry(in_=seconds, reason="not yet")


@app.job(name="snooze_once")
def snooze_once(seconds: float) -> str:
    """Snoozes on its first run (seen in meta), then succeeds."""
    with psycopg.connect(app.dsn, autocommit=True) as c:
        row = c.execute(
            f"SELECT meta ? 'snoozed' FROM {app.config.schema}.jobs WHERE id = %s",
            (pgjobs.current_job().id,),
        ).fetchone()
    if row and not row[0]:
        raise pgjobs.Snooze(seconds)
    return "woke"


@app.job(name="cancel_me")
def cancel_me(reason: str) -> None:
    raise pgjobs.Cancel(reason)


@app.job(name="slow_async", timeout=0.2, retry_backoff=lambda attempt: 0.0, max_attempts=1)
async def slow_async() -> None:
    await asyncio.sleep(30)


@app.job(name="slow_sync", timeout=0.2, retry_backoff=lambda attempt: 0.0, max_attempts=1)
def slow_sync() -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not pgjobs.current_job().should_stop:
        time.sleep(0.01)
    return pgjobs.current_job().should_stop


@app.job(name="watch_lease")
def watch_lease(seconds: float) -> None:
    """Waits until its lease is lost (or time runs out) and records what it saw."""
    record_attempt()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not pgjobs.current_job().lease_lost:
        time.sleep(0.02)
    record_attempt(note=f"lease_lost={pgjobs.current_job().lease_lost}")


@app.job(name="crash")
def crash() -> None:
    """Kills its own worker process, like a segfault or the OOM killer."""
    record_attempt()
    os._exit(77)


@app.job(name="nul_result")
def nul_result() -> str:
    return "a\x00b"


@app.job(name="nul_error", max_attempts=1)
def nul_error() -> None:
    raise ValueError("bad\x00byte")


def _broken_backoff() -> float:  # wrong signature: raises TypeError when called
    return 0.0


@app.job(name="broken_backoff", retry_backoff=_broken_backoff, max_attempts=2)
def broken_backoff() -> None:
    raise RuntimeError("fails")


@app.job(name="exits", max_attempts=1)
def exits() -> None:
    raise SystemExit(3)


@app.job(name="retry_now", max_attempts=3)
def retry_now() -> None:
    raise pgjobs.Retry(in_=0)


@app.job(name="own_timeout", timeout=30, max_attempts=1)
async def own_timeout() -> None:
    raise TimeoutError("the handler's own timeout")


@app.job(name="complete_then_linger")
def complete_then_linger(seconds: float) -> None:
    """Completes in its transaction, then keeps the transaction (and the row lock) open."""
    record_attempt()
    with psycopg.connect(app.dsn) as conn:
        pgjobs.current_job().complete(conn)
        time.sleep(seconds)
    record_finish()


@app.job(name="polite")
def polite(seconds: float) -> str:
    """Winds down at SIGTERM: asks to be released without spending an attempt."""
    record_attempt()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pgjobs.current_job().shutting_down:
            record_finish()
            raise pgjobs.Snooze(0, reason="shutting down")
        time.sleep(0.02)
    return "done"


def _released(job_id: int) -> bool:
    """The test wrote an effects row for this job: the handler may go on."""
    with psycopg.connect(app.dsn, autocommit=True) as c:
        return c.execute("SELECT FROM public.effects WHERE job_id = %s", (job_id,)).fetchone() \
            is not None


@app.job(name="reporting")
def reporting() -> object:
    """Reports progress and a checkpoint, waits for the test to see them (written by the
    heartbeat), then reports final ones just before it returns (written with the
    outcome). Returns the checkpoint it started from."""
    job = pgjobs.current_job()
    job.progress(0.5)
    job.checkpoint({"step": 1})
    while not _released(job.id):
        time.sleep(0.05)
    job.progress({"done": 2, "total": 2})
    job.checkpoint({"step": 2})
    return job.last_checkpoint


@app.job(name="resumable", retry_backoff=lambda attempt: 0.0)
def resumable() -> object:
    """Checkpoints, then fails its first attempt; the retry returns what it was given."""
    job = pgjobs.current_job()
    if job.last_checkpoint is None:
        job.checkpoint({"rows": 300})
        raise RuntimeError("interrupted after 300 rows")
    return {"resumed_from": job.last_checkpoint}


@app.job(name="checkpoint_then_crash")
def checkpoint_then_crash() -> object:
    """Checkpoints, waits until a heartbeat wrote it, then kills its worker. The
    recovered attempt returns the checkpoint it was given."""
    job = pgjobs.current_job()
    if job.last_checkpoint is not None:
        return {"recovered_from": job.last_checkpoint, "recoveries": job.recoveries}
    job.checkpoint({"offset": 1234})
    while True:
        with psycopg.connect(app.dsn, autocommit=True) as c:
            row = c.execute("SELECT checkpoint FROM pgjobs.jobs WHERE id = %s",
                            (job.id,)).fetchone()
        if row is not None and row[0] is not None:
            os._exit(77)
        time.sleep(0.05)


@app.job(name="reporting_tx")
def reporting_tx() -> None:
    """Reports, then succeeds in its own transaction (the report goes with it)."""
    job = pgjobs.current_job()
    job.progress(1)
    job.checkpoint(["last"])
    with job.transaction() as conn:
        conn.execute("SELECT 1")
