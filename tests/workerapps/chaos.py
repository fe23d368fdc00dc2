"""Tasks of the chaos suite (tests/chaos), run in-process and by `pgjobs worker` subprocesses.

The harness of RELIABILITY.md:

- ``chaos_attempts``: one row per execution, written when the handler starts on a separate
  autocommit connection, so it counts runs whose transaction rolled back or whose
  process died.
- ``chaos_effects``: the job's side effect, written in the job's own transaction together
  with ``current_job().complete(conn)``. It has no unique key on purpose: a duplicate
  effect must show up as a second row, not be turned into a retry by a constraint.
- ``chaos_notes``: what a handler observed (told to stop, lease lost, ``LeaseLost``).

Handlers keep one connection per thread and kind (a job costs two or three round trips,
not three new connections), and reconnect after a failure. Failed jobs retry after
0.2 s, so a job that failed while the database was down runs again quickly.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

import pgjobs

app = pgjobs.App(schema=os.environ.get("PGJOBS_SCHEMA", "pgjobs"))

HARNESS = """
CREATE TABLE IF NOT EXISTS public.chaos_attempts (
    job_id bigint NOT NULL, attempt int NOT NULL, recoveries int NOT NULL, pid int NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS chaos_attempts_job_idx ON public.chaos_attempts (job_id);
CREATE TABLE IF NOT EXISTS public.chaos_effects (
    job_id bigint NOT NULL, pid int NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS chaos_effects_job_idx ON public.chaos_effects (job_id);
CREATE TABLE IF NOT EXISTS public.chaos_notes (
    job_id bigint NOT NULL, pid int NOT NULL, note text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""

FAST = {"max_attempts": 1000, "retry_backoff": lambda attempt: 0.2}

_local = threading.local()

# Arguments as handlers received them, by job id (for in-process round-trip tests).
RECEIVED: dict[int, dict[str, Any]] = {}


def connection(kind: str) -> psycopg.Connection[Any]:
    """This thread's autocommit connection for ``kind`` (attempts, effects, notes)."""
    conn: psycopg.Connection[Any] | None = getattr(_local, kind, None)
    if conn is None or conn.closed:
        conn = psycopg.connect(app.dsn, autocommit=True, application_name=f"chaos-{kind}")
        setattr(_local, kind, conn)
    return conn


def run(kind: str, work: Callable[[psycopg.Connection[Any]], None]) -> None:
    """``work`` on this thread's connection; once more on a new connection if that one
    died or could not be opened (a server restart, a terminated backend, a reset link),
    as a pool with a health check would.
    Repeating is safe: an effect whose first commit went through is refused by the
    lease fence the second time."""
    for last in (False, True):
        conn = None
        try:
            conn = connection(kind)
            work(conn)
            return
        except psycopg.OperationalError:
            if last or (conn is not None and not conn.closed):
                raise


def log_attempt() -> pgjobs.JobContext:
    job = pgjobs.current_job()
    run("attempts", lambda conn: conn.execute(
        "INSERT INTO public.chaos_attempts (job_id, attempt, recoveries, pid) "
        "VALUES (%s, %s, %s, %s)",
        (job.id, job.attempt, job.recoveries, os.getpid()),
    ))
    return job


def note(text: str) -> None:
    job_id = pgjobs.current_job().id
    run("notes", lambda conn: conn.execute(
        "INSERT INTO public.chaos_notes (job_id, pid, note) VALUES (%s, %s, %s)",
        (job_id, os.getpid(), text),
    ))


def write_effect() -> None:
    """The exactly-once effect: insert and complete in one transaction."""
    job = pgjobs.current_job()

    def effect(conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute(
                "INSERT INTO public.chaos_effects (job_id, pid) VALUES (%s, %s)",
                (job.id, os.getpid()),
            )
            job.complete(conn)

    try:
        run("effects", effect)
    except pgjobs.LeaseLost:
        note("LeaseLost")
        raise


def wait(seconds: float, obey: bool = True) -> bool:
    """Work for ``seconds``; with ``obey``, stop early when told. True if told to stop."""
    job = pgjobs.current_job()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if obey and job.should_stop:
            return True
        time.sleep(0.01)
    return job.should_stop


@app.job(name="chaos.effect", **FAST)
def effect(sleep: float = 0.0) -> None:
    log_attempt()
    wait(sleep, obey=False)
    write_effect()


@app.job(name="chaos.plain", **FAST)
def plain(sleep: float = 0.0) -> str:
    """A job without transactional completion: the worker records its outcome."""
    log_attempt()
    wait(sleep, obey=False)
    return "ok"


@app.job(name="chaos.stall", **FAST)
def stall(first: float = 60.0) -> None:
    """Its first run (no recovery yet) works until told to stop, then still tries to write
    its effect, which the lease fence must refuse; a recovered run writes it at once."""
    job = log_attempt()
    if job.recoveries == 0:
        stopped = wait(first)
        note(f"stopped={stopped} lease_lost={job.lease_lost}")
    write_effect()


@app.job(name="chaos.astall", **FAST)
async def astall(first: float = 60.0) -> None:
    """``stall`` as an async handler: a lost lease cancels it."""
    job = await asyncio.to_thread(log_attempt)
    if job.recoveries == 0:
        try:
            await asyncio.sleep(first)
        except asyncio.CancelledError:
            # In a thread: a write stuck in a partition must not block the event loop.
            await asyncio.to_thread(note, f"cancelled lease_lost={job.lease_lost}")
            raise
    await asyncio.to_thread(write_effect)


@app.job(name="chaos.poison", max_attempts=1)
def poison() -> None:
    """Kills its worker process every time, like a segfault or the OOM killer."""
    log_attempt()
    os._exit(77)


@app.job(name="chaos.obedient", **FAST)
def obedient(seconds: float) -> str:
    log_attempt()
    if wait(seconds):
        note("stopped")
        return "stopped"
    return "done"


@app.job(name="chaos.aobedient", **FAST)
async def aobedient(seconds: float) -> str:
    await asyncio.to_thread(log_attempt)
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        await asyncio.to_thread(note, "cancelled")
        raise
    return "done"


@app.job(name="chaos.stubborn", **FAST)
def stubborn(seconds: float) -> None:
    """Ignores should_stop; then tries to write its effect (fenced)."""
    log_attempt()
    wait(seconds, obey=False)
    write_effect()


@app.job(name="chaos.pool_hog", **FAST)
def pool_hog(seconds: float) -> None:
    """Holds one of the app pool's connections for ``seconds`` (more handlers than pool
    connections: the rest wait for the pool)."""
    log_attempt()
    with app.pool.connection() as conn:
        conn.execute("SELECT pg_sleep(%s)", (seconds,))


@app.job(name="chaos.cpu", **FAST)
def cpu(seconds: float) -> int:
    """Burns CPU (and the GIL) for ``seconds``."""
    log_attempt()
    deadline, spins = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        spins += sum(range(1000))
    return spins


@app.job(name="chaos.aslow", **FAST)
async def aslow(seconds: float) -> None:
    await asyncio.to_thread(log_attempt)
    await asyncio.sleep(seconds)


@app.job(name="chaos.strict")
def strict(x: int) -> int:
    """The default retry backoff (16 s or more): a failure stays at attempt 1 a while."""
    return x


@app.job(name="chaos.echo", **FAST)
def echo(**kwargs: Any) -> None:
    RECEIVED[pgjobs.current_job().id] = kwargs
