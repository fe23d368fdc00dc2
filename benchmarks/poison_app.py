"""The worker app of benchmarks/poison_recovery.py (and tests/chaos/test_crashes.py's
poison-among-innocents test): innocent jobs and one poison job that kills its process.

- ``poison.innocent(n)``: on its first run (``recoveries`` 0) it waits for the crash
  (it is one of the jobs the crashing worker holds); once recovered it takes
  ``POISON_JOB_SECONDS`` (default 0.2) and succeeds.
- ``poison.poison()``: waits until ``POISON_WORKERS`` workers are running (so the others
  are up when it strikes), records the crash in ``poison_crashes`` and ends its process
  with ``os._exit``, every time it runs.
"""

from __future__ import annotations

import asyncio
import os
import time

import psycopg

import pgjobs

app = pgjobs.App()
JOB_SECONDS = float(os.environ.get("POISON_JOB_SECONDS", "0.2"))
WORKERS = int(os.environ.get("POISON_WORKERS", "4"))


@app.job(name="poison.innocent")
async def innocent(n: int) -> int:
    if pgjobs.current_job().recoveries == 0:
        await asyncio.sleep(3600)  # held by the worker that crashes: dies with it
    await asyncio.sleep(JOB_SECONDS)
    return n


@app.job(name="poison.poison")
def poison() -> None:
    with psycopg.connect(app.dsn, autocommit=True) as conn:
        while conn.execute("SELECT count(*) FROM pgjobs.workers "
                           "WHERE state = 'running'").fetchone()[0] < WORKERS:  # type: ignore[index]
            time.sleep(0.1)
        conn.execute("INSERT INTO poison_crashes (pid) VALUES (%s)", (os.getpid(),))
    os._exit(3)
