"""Worker processes, a fleet that keeps their logs, and the exactly-once checks."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg

from pgjobs.core import outcomes
from pgjobs.core.types import ClaimedJob
from pgjobs.db import leases
from pgjobs.db.connection import RETRY_STATEMENT
from pgjobs.worker.context import JobContext
from tests.helpers import TESTS, query, scalar
from tests.workerapps.chaos import app as chaos_app

CHAOS_APP = "workerapps.chaos:app"
FULL = os.environ.get("PGJOBS_CHAOS_SCALE", "short") == "full"
if os.environ.get("PGJOBS_CHAOS_SCALE", "short") not in ("short", "full"):
    raise RuntimeError("PGJOBS_CHAOS_SCALE must be 'short' (the default) or 'full'")


def scale(short: Any, full: Any) -> Any:
    """``short`` in `make test`, ``full`` under PGJOBS_CHAOS_SCALE=full (`make chaos`)."""
    return full if FULL else short


class Worker:
    """A real `pgjobs worker` subprocess, killed by pid; its log file is kept."""

    def __init__(self, dsn: str, args: Iterable[str], log: Path,
                 env: dict[str, str] | None = None, app: str = CHAOS_APP) -> None:
        self.args = list(args)
        self.logpath = log
        self.env = env or {}
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pgjobs", "worker", "--app", app, *self.args],
            env={
                **os.environ,
                "PGJOBS_DATABASE_URL": dsn,
                "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
                **self.env,
            },
            stdout=self._log, stderr=subprocess.STDOUT, cwd=str(TESTS),
        )
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def started(self) -> bool:
        """The worker registered and began claiming (its log says so)."""
        return b" started: queues=" in self.logpath.read_bytes() and self.alive()

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def kill(self) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGCONT)  # a stopped process must run to die
            self.proc.kill()
        self.proc.wait(30)
        self._log.close()

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def log(self) -> str:
        return self.logpath.read_text(errors="replace")

    def worker_id(self, dsn: str) -> int | None:
        value = scalar(dsn, "SELECT max(id) FROM pgjobs.workers WHERE pid = %s", self.pid)
        return None if value is None else int(value)


class Fleet:
    """Every worker a test started; logs live in the test's tmp_path (kept by pytest) and
    are printed when the test fails."""

    def __init__(self, dsn: str, logdir: Path) -> None:
        self.dsn = dsn
        self.logdir = logdir
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.workers: list[Worker] = []

    def spawn(self, *args: str, dsn: str | None = None, env: dict[str, str] | None = None,
              app: str = CHAOS_APP) -> Worker:
        n = len(self.workers) + 1
        log = self.logdir / f"worker-{n:03d}.log"
        worker = Worker(dsn or self.dsn, args, log, env=env, app=app)
        self.workers.append(worker)
        return worker

    def alive(self) -> list[Worker]:
        return [w for w in self.workers if w.alive()]

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.kill()

    def report(self) -> str:
        parts = []
        for worker in self.workers:
            state = "running" if worker.alive() else f"exit {worker.returncode}"
            parts.append(f"--- worker pid {worker.pid} ({state}) {' '.join(worker.args)} "
                         f"{worker.env or ''}\n    log: {worker.logpath}\n{worker.log()}")
        return "\n".join(parts)


# -- checks on database state --------------------------------------------------------------


def states(dsn: str, ids: Iterable[int] | None = None) -> dict[str, int]:
    if ids is None:
        rows = query(dsn, "SELECT state, count(*) FROM pgjobs.jobs GROUP BY state")
    else:
        rows = query(dsn, "SELECT state, count(*) FROM pgjobs.jobs WHERE id = ANY(%s) "
                          "GROUP BY state", list(ids))
    return {str(state): int(count) for state, count in rows}


def all_succeeded(dsn: str, ids: list[int]) -> bool:
    return states(dsn, ids) == {"succeeded": len(ids)}


def assert_exactly_once(dsn: str, ids: list[int]) -> None:
    """Every job succeeded, none is left running, and each has exactly one effects row."""
    assert states(dsn, ids) == {"succeeded": len(ids)}
    assert scalar(dsn, "SELECT count(*) FROM pgjobs.jobs WHERE state = 'running'") == 0
    counts = dict(query(dsn, "SELECT job_id, count(*) FROM public.chaos_effects "
                             "WHERE job_id = ANY(%s) GROUP BY job_id", ids))
    wrong = {job_id: counts.get(job_id, 0) for job_id in ids if counts.get(job_id, 0) != 1}
    assert not wrong, f"jobs without exactly one effect (job id: effects): {wrong}"


def listeners(dsn: str) -> list[tuple[int, object]]:
    """Backends of pgjobs workers that are LISTENing, with their start times."""
    rows = query(dsn, "SELECT pid, backend_start FROM pg_stat_activity "
                      "WHERE datname = current_database() AND application_name = 'pgjobs-listen' "
                      "AND query LIKE 'LISTEN %%'")
    return [(int(pid), start) for pid, start in rows]


def never_ran_after_finishing(dsn: str) -> list[tuple[Any, ...]]:
    """Executions that started after their job had finished (must be none)."""
    return query(dsn, """
        SELECT a.job_id, a.pid, a.started_at, j.finished_at
        FROM public.chaos_attempts a JOIN pgjobs.jobs j ON j.id = a.job_id
        WHERE j.finished_at IS NOT NULL AND a.started_at > j.finished_at""")


# -- acting as a worker from the test ------------------------------------------------------


def claim(conn: psycopg.Connection[Any], limit: int = 1, queue: str = "default"
          ) -> list[JobContext]:
    """Claim up to ``limit`` jobs of ``queue`` with the workers' own statement."""
    queries = chaos_app.queries
    rows = conn.execute(queries.job_claim, {
        "queues": [queue], "limit": limit, "lease": timedelta(seconds=60),
        "worker_id": None}).fetchall()
    return [JobContext(ClaimedJob(*row), queries) for row in rows]


def write_outcomes(conn: psycopg.Connection[Any],
                   writes: list[tuple[JobContext, outcomes.Outcome]]) -> list[int]:
    """One flush of the completer's statement (rows as its ``outcome_row`` makes them) on
    an autocommit connection; returns the ids written, one per row changed. Like the
    completer, it runs the statement again when PostgreSQL aborted it as a deadlock
    victim (rare since flushes lock their batches in id order, but a stale flush and a
    reclaim can still cross): the statement is all or nothing, so the retry is the
    flush."""
    assert conn.autocommit
    rows = []
    for ctx, outcome in writes:
        row = leases.outcome_row(outcome)
        assert row is not None
        rows.append((ctx.id, ctx.job.lease_token, row))
    while True:
        try:
            written = conn.execute(chaos_app.queries.job_complete_many,
                                   leases.outcomes_param(rows)).fetchall()
        except RETRY_STATEMENT:
            time.sleep(random.uniform(0.001, 0.02))
            continue
        return [int(r[0]) for r in written]


def complete_many(conn: psycopg.Connection[Any], ctx: JobContext,
                  outcome: outcomes.Outcome) -> set[int]:
    return set(write_outcomes(conn, [(ctx, outcome)]))


def pause(seconds: float) -> None:
    """Between fault injections (never to decide an assertion)."""
    time.sleep(seconds)
