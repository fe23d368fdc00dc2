"""The app of the supervisor tests: an exactly-once effect, cheap enough for thousands.

Like ``basic.effect``, but on a connection kept per executor thread (as an application's
pool would) instead of three new connections per job. The attempt is logged and
committed first (so runs whose effect rolled back still count), then the effect and the
fenced completion commit together.

Importing this module fails while the file named by ``PGJOBS_TEST_BROKEN_DEPLOY`` exists:
that is how a test simulates deploying code that cannot start. While the file named by
``PGJOBS_TEST_SLOW_IMPORT`` exists, importing takes the seconds it holds.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import psycopg

import pgjobs

_broken = os.environ.get("PGJOBS_TEST_BROKEN_DEPLOY")
if _broken and os.path.exists(_broken):
    raise ImportError(f"this deploy is broken ({_broken} exists)")
_slow = os.environ.get("PGJOBS_TEST_SLOW_IMPORT")
if _slow and os.path.exists(_slow):  # a window in which the process has not registered
    time.sleep(float(Path(_slow).read_text() or "3"))

app = pgjobs.App(schema=os.environ.get("PGJOBS_SCHEMA", "pgjobs"))


_local = threading.local()


def _connection() -> psycopg.Connection[tuple[object, ...]]:
    """One connection per executor thread, kept between jobs (as an app's pool would)."""
    conn: psycopg.Connection[tuple[object, ...]] | None = getattr(_local, "conn", None)
    if conn is None or conn.closed or conn.broken:
        conn = _local.conn = psycopg.connect(app.dsn)
    return conn


@app.job(name="effect_once")
def effect_once() -> None:
    job = pgjobs.current_job()
    conn = _connection()
    try:
        conn.execute("INSERT INTO public.attempts (job_id, attempt, pid) VALUES (%s, %s, %s)",
                     (job.id, job.attempt, os.getpid()))
        conn.commit()
        conn.execute("INSERT INTO public.effects (job_id, pid) VALUES (%s, %s)",
                     (job.id, os.getpid()))
        job.complete(conn)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
