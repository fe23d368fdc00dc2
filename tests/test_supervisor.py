"""`pgjobs worker --processes N`: crash restarts, SIGTERM drains, and an aborted rolling
restart, with real processes; every assertion is on database state. SIGHUP rolling
restarts under a steady stream are in tests/chaos/test_rolling_restart.py."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.helpers import query, scalar, wait_until
from tests.workerapps import rolling
from tests.workerprocs import Spawner, running_pids, spawner, wait_for_running, with_harness

pytestmark = pytest.mark.xdist_group("supervisor")

APP = "workerapps.rolling:app"
FLAGS = ("--processes", "2", "--concurrency", "8", "--poll-interval", "0.2",
         "--shutdown-timeout", "30", "--lease", "10")


@pytest.fixture
def dsn(fresh_dsn: str) -> str:
    return with_harness(fresh_dsn)


@pytest.fixture
def spawn(dsn: str) -> Iterator[Spawner]:
    with spawner(dsn) as start:
        yield start


def test_a_crashed_worker_process_is_restarted_and_sigterm_drains_all(
    dsn: str, spawn: Spawner
) -> None:
    supervisor = spawn(*FLAGS, app=APP)
    first = wait_for_running(dsn, 2, "two worker processes")
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    replacement = wait_until(lambda: (p := running_pids(dsn) - first) and p, 60,
                             "a replacement process")
    # The killed process could not record its end: its row still says running.
    assert running_pids(dsn) == first | replacement
    with psycopg.connect(dsn) as conn:
        rolling.effect_once.enqueue_many(conn, [{}] * 50)
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM public.effects") == 50, 60, "jobs")
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait(60) == 0
    states = dict(query(dsn, "SELECT pid, state FROM pgjobs.workers"))
    assert states[victim] == "running"  # killed: it could not record anything
    assert {states[pid] for pid in states if pid != victim} == {"stopped"}
    assert "exited unexpectedly (status -9)" in supervisor.log()


def test_a_process_killed_before_it_registered_is_restarted_not_taken_for_a_broken_deploy(
    dsn: str, spawn: Spawner, tmp_path: Path
) -> None:
    slow = tmp_path / "slow"
    slow.write_text("30")
    supervisor = spawn(*FLAGS, app=APP, env={"PGJOBS_TEST_SLOW_IMPORT": str(slow)})
    children = Path(f"/proc/{supervisor.pid}/task/{supervisor.pid}/children")
    first = wait_until(lambda: {int(p) for p in children.read_text().split()}
                       if len(children.read_text().split()) == 2 else None,
                       60, "two worker processes importing")
    slow.unlink()  # the replacements import at once
    for pid in first:
        os.kill(pid, signal.SIGKILL)  # neither has registered: each sleeps in its import
    wait_for_running(dsn, 2, "two replacement processes")
    assert not running_pids(dsn) & first
    assert supervisor.proc.poll() is None
    assert supervisor.log().count("exited unexpectedly (status -9)") == 2
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait(60) == 0


def test_a_deploy_that_cannot_start_aborts_the_rolling_restart(
    dsn: str, spawn: Spawner, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    supervisor = spawn(*FLAGS, app=APP, env={"PGJOBS_TEST_BROKEN_DEPLOY": str(broken)})
    first = wait_for_running(dsn, 2, "two worker processes")
    broken.touch()  # the new code cannot be imported
    supervisor.signal(signal.SIGHUP)
    wait_until(lambda: "rolling restart aborted" in supervisor.log(), 60, "the abort")
    assert running_pids(dsn) == first  # the old processes keep working
    with psycopg.connect(dsn) as conn:
        rolling.effect_once.enqueue_many(conn, [{}] * 20)
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM public.effects") == 20, 60, "jobs")
    assert {pid for (pid,) in query(dsn, "SELECT DISTINCT pid FROM public.effects")} <= first
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait(60) == 0
    assert "exited with status 1" in supervisor.log()  # the replacement's import error
