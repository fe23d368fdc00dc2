"""Fixtures' building blocks for tests that start `pgjobs worker` subprocesses."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from tests.helpers import HARNESS_APP, WorkerProcess, query, wait_until
from tests.workerapps.basic import HARNESS


def with_harness(dsn: str) -> str:
    """Create the attempts/effects tables of tests/workerapps/basic.py in ``dsn``."""
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(HARNESS)
    return dsn


class Spawner:
    """Starts worker processes against one database and kills them at the end, printing
    their logs (pytest shows them when the test fails)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.started: list[WorkerProcess] = []

    def __call__(self, *args: str, app: str = HARNESS_APP,
                 env: dict[str, str] | None = None) -> WorkerProcess:
        worker = WorkerProcess(self.dsn, *args, app=app, env=env)
        self.started.append(worker)
        return worker

    def close(self) -> None:
        for worker in self.started:
            worker.kill()
            print(f"--- worker {worker.pid} log ---\n{worker.log()}")
            worker.close()


@contextmanager
def spawner(dsn: str) -> Iterator[Spawner]:
    spawn = Spawner(dsn)
    try:
        yield spawn
    finally:
        spawn.close()


def running_pids(dsn: str) -> set[int]:
    """The pids of the worker processes registered as running."""
    return {pid for (pid,) in query(dsn, "SELECT pid FROM pgjobs.workers "
                                         "WHERE state = 'running'")}


def wait_for_running(dsn: str, count: int, what: str) -> set[int]:
    wait_until(lambda: len(running_pids(dsn)) == count, 60, what)
    return running_pids(dsn)
