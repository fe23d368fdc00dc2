"""Rolling restarts of a `pgjobs worker --processes N` supervisor (SIGHUP) while jobs
stream in.

RELIABILITY.md row: "rolling restart of a --processes N supervisor (SIGHUP) during a
steady stream".
"""

from __future__ import annotations

import itertools
import signal
import threading
import time
from datetime import timedelta

import psycopg
import pytest

from tests.chaos.harness import Fleet, scale
from tests.helpers import query, scalar, wait_until
from tests.workerapps import rolling
from tests.workerprocs import running_pids, wait_for_running, with_harness

# The group of the small test this one replaced (tests/test_supervisor.py).
pytestmark = [pytest.mark.chaos, pytest.mark.xdist_group("supervisor")]

APP = "workerapps.rolling:app"
POLL = 0.2
FLAGS = ("--processes", "2", "--concurrency", "8", "--poll-interval", str(POLL),
         "--shutdown-timeout", "30", "--lease", "10")
# How long completions may stop while jobs wait: one claim interval, plus what a loaded
# two-core machine adds (a new interpreter importing the app competes for the CPU with
# the draining and the surviving processes, the test and other tests).
RESTART_ALLOWANCE = timedelta(seconds=2)

# The longest time no job completed while one was waiting to run: between consecutive
# completions, counted from when the first job still to finish was enqueued (a pause of
# the stream is not the workers' gap).
LONGEST_GAP = """
WITH done AS (
    SELECT finished_at,
           lag(finished_at) OVER (ORDER BY finished_at) AS previous,
           min(created_at) OVER (ORDER BY finished_at DESC
                                 ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS waiting
    FROM pgjobs.jobs WHERE state = 'succeeded'
)
SELECT finished_at - greatest(previous, waiting) AS gap, greatest(previous, waiting)
FROM done WHERE previous IS NOT NULL
ORDER BY gap DESC LIMIT 1
"""


class Producer(threading.Thread):
    """Enqueues small committed batches at a steady pace until ``stop`` is set."""

    def __init__(self, dsn: str, batch: int = 10, pause: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.dsn, self.batch, self.pause = dsn, batch, pause
        self.stop = threading.Event()
        self.enqueued = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn) as conn:
                while not self.stop.is_set():
                    rolling.effect_once.enqueue_many(conn, [{}] * self.batch)
                    conn.commit()
                    self.enqueued += self.batch
                    time.sleep(self.pause)
        except BaseException as exc:  # surfaced by the test
            self.error = exc


def effects_by(dsn: str, pids: set[int]) -> int:
    return int(scalar(dsn, "SELECT count(*) FROM public.effects WHERE pid = ANY(%s)",
                      list(pids)))


@pytest.mark.timeout(scale(180, 900))
def test_rolling_restarts_under_a_steady_stream_lose_nothing_and_never_stall(
    db: str, fleet: Fleet
) -> None:
    """SIGHUP, again and again, while a producer enqueues steadily: every job runs and
    commits its effect exactly once; each generation of processes starts before the one
    it replaces stops and does part of the work; and completions never stop for longer
    than a claim interval (plus an allowance for a loaded machine) while a job waits."""
    with_harness(db)
    restarts, per_generation = scale(1, 4), scale(300, 800)
    supervisor = fleet.spawn(*FLAGS, app=APP)
    generations = [wait_for_running(db, 2, "two worker processes")]
    producer = Producer(db)
    producer.start()
    for _ in range(restarts):
        old = generations[-1]
        wait_until(lambda o=old: effects_by(db, o) >= per_generation or producer.error, 120,
                   "this generation's share of the stream")
        supervisor.signal(signal.SIGHUP)
        generations.append(wait_until(
            lambda o=old: (p := running_pids(db)) and not p & o and len(p) == 2 and p,
            120, "two new worker processes"))
    wait_until(lambda: effects_by(db, generations[-1]) >= per_generation or producer.error,
               120, "the last generation's share of the stream")
    producer.stop.set()
    producer.join(60)
    assert producer.error is None
    total = producer.enqueued
    wait_until(lambda: scalar(db, "SELECT count(*) FROM pgjobs.jobs WHERE state = "
                                  "'succeeded'") == total, 120, "every job to succeed")
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait(60) == 0

    # Every job ran exactly once, and its effect committed exactly once.
    assert scalar(db, "SELECT count(*) FROM public.effects") == total
    assert scalar(db, "SELECT count(DISTINCT job_id) FROM public.effects") == total
    assert scalar(db, "SELECT count(*) FROM public.attempts") == total
    assert query(db, "SELECT state, count(*) FROM pgjobs.jobs GROUP BY 1") == [
        ("succeeded", total)]
    assert scalar(db, "SELECT max(attempt) + max(recoveries) FROM pgjobs.jobs") == 1
    # Each new process started before the old one of its slot stopped, every generation
    # did part of the work, and all of them stopped cleanly.
    workers = {pid: (state, started, stopped) for pid, state, started, stopped in query(
        db, "SELECT pid, state, started_at, stopped_at FROM pgjobs.workers")}
    assert set(workers) == set().union(*generations)
    assert {state for state, _, _ in workers.values()} == {"stopped"}
    for old, new in itertools.pairwise(generations):
        starts = sorted(workers[pid][1] for pid in new)
        stops = sorted(workers[pid][2] for pid in old)
        assert starts[0] < stops[0] and starts[1] < stops[1]
    for generation in generations:
        assert effects_by(db, generation) > 0
    gap, at = query(db, LONGEST_GAP)[0]
    print(f"{total} jobs, {restarts} rolling restart(s); longest gap {gap} from {at}")
    assert gap <= timedelta(seconds=POLL) + RESTART_ALLOWANCE, (
        f"no job completed for {gap} from {at} while jobs waited")
    log = supervisor.log()
    assert log.count("rolling restart complete") == restarts
    assert "drained and exited (status 0)" in log
