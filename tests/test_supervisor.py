"""`pgjobs worker --processes N`: crash restarts, SIGTERM drains, and SIGHUP rolling
restarts under load, with real processes; every assertion is on database state."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.helpers import query, scalar, wait_until
from tests.workerapps import rolling
from tests.workerprocs import Spawner, spawner, with_harness

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


def running_pids(dsn: str) -> set[int]:
    return {pid for (pid,) in query(dsn, "SELECT pid FROM pgjobs.workers "
                                         "WHERE state = 'running'")}


def wait_for_running(dsn: str, count: int, what: str) -> set[int]:
    wait_until(lambda: len(running_pids(dsn)) == count, 60, what)
    return running_pids(dsn)


class Producer(threading.Thread):
    """Enqueues ``total`` jobs in small committed batches at a steady pace. The last
    ``tail`` jobs wait for ``release``, so that some of the stream is certainly left for
    the workers that come after a rolling restart, however slowly it goes."""

    def __init__(self, dsn: str, total: int, tail: int, batch: int = 20,
                 pause: float = 0.03) -> None:
        super().__init__(daemon=True)
        self.dsn, self.total, self.tail, self.batch, self.pause = dsn, total, tail, batch, pause
        self.release = threading.Event()
        self.enqueued = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn) as conn:
                while self.enqueued < self.total:
                    if self.enqueued >= self.total - self.tail:
                        self.release.wait(120)
                    rolling.effect_once.enqueue_many(conn, [{}] * self.batch)
                    conn.commit()
                    self.enqueued += self.batch
                    time.sleep(self.pause)
        except BaseException as exc:  # surfaced by the test
            self.error = exc


def test_sighup_rolling_restart_under_a_steady_stream_runs_every_job_once(
    dsn: str, spawn: Spawner
) -> None:
    supervisor = spawn(*FLAGS, app=APP)
    old = wait_for_running(dsn, 2, "two worker processes")
    producer = Producer(dsn, total=2000, tail=300)
    producer.start()
    wait_until(lambda: producer.enqueued >= 500 or producer.error, 60, "a quarter of the stream")
    supervisor.signal(signal.SIGHUP)
    new = wait_until(lambda: (p := running_pids(dsn)) and not p & old and len(p) == 2 and p,
                     60, "two new worker processes")
    producer.release.set()
    producer.join(120)
    assert producer.error is None and producer.enqueued == 2000
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM pgjobs.jobs WHERE state = "
                                   "'succeeded'") == 2000, 120, "every job to succeed")
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait(60) == 0

    # Every job ran exactly once, and its effect committed exactly once.
    assert scalar(dsn, "SELECT count(*) FROM public.effects") == 2000
    assert scalar(dsn, "SELECT count(*) FROM public.attempts") == 2000
    assert query(dsn, "SELECT state, count(*) FROM pgjobs.jobs GROUP BY 1") == [
        ("succeeded", 2000)]
    assert scalar(dsn, "SELECT max(attempt) + max(recoveries) FROM pgjobs.jobs") == 1
    # Four processes in all: two old, two new, each new one started before an old one
    # was stopped, and both generations did part of the work.
    workers = query(dsn, "SELECT pid, state, started_at, stopped_at FROM pgjobs.workers")
    assert {pid for pid, *_ in workers} == old | new and all(
        state == "stopped" for _, state, _, _ in workers)
    starts = sorted(started for pid, _, started, _ in workers if pid in new)
    stops = sorted(stopped for pid, _, _, stopped in workers if pid in old)
    assert starts[0] < stops[0] and starts[1] < stops[1]
    did_work = {pid for (pid,) in query(dsn, "SELECT DISTINCT pid FROM public.effects")}
    assert did_work & old and did_work & new
    log = supervisor.log()
    assert "rolling restart complete" in log and "drained and exited (status 0)" in log


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
