"""Shared helpers for tests that run workers: subprocess workers, polling the database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import pgjobs

TESTS = Path(__file__).resolve().parent
HARNESS_APP = "workerapps.basic:app"


def query(dsn: str, text: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as c:
        cursor = c.execute(text, params or None)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


def scalar(dsn: str, text: str, *params: Any) -> Any:
    rows = query(dsn, text, *params)
    return rows[0][0] if rows else None


def wait_until(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def job_state(dsn: str, job_id: int) -> str:
    return str(scalar(dsn, "SELECT state FROM pgjobs.jobs WHERE id = %s", job_id))


class WorkerProcess:
    """A real `pgjobs worker` subprocess; its log is kept and printed on failure."""

    def __init__(self, dsn: str, *args: str, env: dict[str, str] | None = None,
                 app: str = HARNESS_APP) -> None:
        self.logfile = tempfile.NamedTemporaryFile(  # noqa: SIM115 - kept open with the process
            prefix="pgjobs-worker-", suffix=".log", delete=False
        )
        full_env = {
            **os.environ,
            "PGJOBS_DATABASE_URL": dsn,
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pgjobs", "worker", "--app", app, *args],
            env=full_env, stdout=self.logfile, stderr=subprocess.STDOUT, cwd=str(TESTS),
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def log(self) -> str:
        return Path(self.logfile.name).read_text(errors="replace")

    def close(self) -> None:
        self.kill()
        self.logfile.close()
        Path(self.logfile.name).unlink(missing_ok=True)


def harness_database(
    fresh_dsn: str, monkeypatch: pytest.MonkeyPatch, harness: str, app: pgjobs.App
) -> Iterator[str]:
    """A fresh database with a test app's harness tables, the app pointed at it (through
    PGJOBS_DATABASE_URL) and its pools closed afterwards. Fixtures ``yield from`` this."""
    with psycopg.connect(fresh_dsn, autocommit=True) as c:
        c.execute(harness)
    monkeypatch.setenv("PGJOBS_DATABASE_URL", fresh_dsn)
    yield fresh_dsn
    app.close()
