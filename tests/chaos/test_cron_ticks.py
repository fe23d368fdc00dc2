"""Periodic ticks across a fleet: three workers on the same schedules, one stalled inside
its tick transaction past its lease, then the whole fleet paused.

RELIABILITY.md row: "three workers running the same cron schedule; one paused past its
lease, then resumed". The app (tests/workerapps/periodic.py) has a one-second schedule
for each catch-up policy of docs/periodic.md.
"""

from __future__ import annotations

import itertools
import signal
import time
from datetime import datetime, timedelta

import pytest

from tests.chaos.harness import Fleet, Worker, pause, scale
from tests.helpers import query, scalar, wait_until

# The group of the small test this one replaced (tests/test_periodic.py).
pytestmark = [pytest.mark.chaos, pytest.mark.xdist_group("periodic")]

PERIODIC_APP = "workerapps.periodic:app"
ARGS = ("--lease", "2", "--poll-interval", "0.2")
TICKS = "SELECT count(*) FROM pgjobs.jobs WHERE meta->>'periodic' = 'every_second'"
# The stalling worker's maintenance connection, asleep inside a tick transaction.
IN_A_TICK = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = 'pgjobs-maintenance'
  AND state = 'idle in transaction' AND clock_timestamp() - xact_start > interval '0.3 s'
"""


def more_ticks(dsn: str, n: int, what: str) -> None:
    start = scalar(dsn, TICKS)
    wait_until(lambda: scalar(dsn, TICKS) >= start + n, 60, what)


def stop_inside_a_tick(dsn: str, stalling: Worker, patience: float = 60) -> None:
    """SIGSTOP ``stalling`` while it holds a schedule's row lock (the worst moment for the
    others), or wherever it is after ``patience`` seconds: competing with the others, it
    may keep losing the ticks for a while."""
    deadline = time.monotonic() + patience
    while not scalar(dsn, IN_A_TICK) and time.monotonic() < deadline:
        pause(0.05)
    stalling.signal(signal.SIGSTOP)


def resume_after_ticks(dsn: str, stalling: Worker) -> None:
    """SIGCONT after six seconds of ticks: past its lease (2 s) and past the tick
    transaction's idle limit (5 s), after which PostgreSQL ended its session and the
    others took over."""
    more_ticks(dsn, 6, "ticks while it is stopped")
    stalling.signal(signal.SIGCONT)
    more_ticks(dsn, 3, "ticks after it resumed")


def ticks(dsn: str, schedule: str) -> list[datetime]:
    rows = query(dsn, "SELECT (meta->>'tick')::timestamptz, count(*) FROM pgjobs.jobs "
                      "WHERE meta->>'periodic' = %s GROUP BY 1 ORDER BY 1", schedule)
    assert {n for _, n in rows} == {1}, f"{schedule}: a tick was enqueued twice"
    assert scalar(dsn, "SELECT last_tick FROM pgjobs.periodic WHERE name = %s",
                  schedule) == rows[-1][0]
    # The ledger, written in the tick transactions, agrees: one enqueued row per job, and
    # its rows tile the ticks (none decided twice, through the stalls and the pause).
    ledger = query(dsn, "SELECT first_tick, tick, outcome, job_id FROM pgjobs.periodic_ticks "
                        "WHERE name = %s ORDER BY first_tick", schedule)
    assert [(t, j) for t, _, outcome, j in ledger if outcome == "enqueued"] == query(
        dsn, "SELECT (meta->>'tick')::timestamptz, id FROM pgjobs.jobs "
             "WHERE meta->>'periodic' = %s ORDER BY 1", schedule), f"{schedule}: ledger"
    assert all(a[1] < b[0] for a, b in itertools.pairwise(ledger)), \
        f"{schedule}: a tick was recorded twice"
    return [t for t, _ in rows]


@pytest.mark.timeout(scale(180, 600))
def test_three_workers_enqueue_each_tick_once_through_stalls_and_a_fleet_pause(
    db: str, fleet: Fleet
) -> None:
    """One worker sleeps inside every tick transaction it wins and is stopped there,
    repeatedly; then all three are stopped at once and resumed. Each (schedule, tick) is
    enqueued exactly once. catch_up="all" leaves no second without its job, the fleet
    pause included; "latest" and "skip" (a gap under a minute) pass over the ticks of the
    fleet pause and enqueue the newest one when the workers wake."""
    # Started alone, it wins the first ticks, so the test can catch it inside one.
    stalling = fleet.spawn(*ARGS, app=PERIODIC_APP,
                           env={"PGJOBS_FAILPOINTS": "periodic_after_advance=sleep:1.5"})
    stop_inside_a_tick(db, stalling)
    assert scalar(db, IN_A_TICK)
    others = [fleet.spawn(*ARGS, app=PERIODIC_APP) for _ in range(2)]
    resume_after_ticks(db, stalling)
    for _ in range(scale(0, 3)):  # again, now that it competes with the others
        stop_inside_a_tick(db, stalling, patience=10)
        resume_after_ticks(db, stalling)
    assert scalar(db, "SELECT count(*) FROM pgjobs.workers WHERE state = 'running'") == 3

    everyone = [stalling, *others]
    for worker in everyone:
        worker.signal(signal.SIGSTOP)
    stopped_at = scalar(db, "SELECT clock_timestamp()")
    pause(scale(4, 8))  # no worker runs: the ticks of these seconds are missed
    resumed_at = scalar(db, "SELECT clock_timestamp()")
    for worker in everyone:
        worker.signal(signal.SIGCONT)
    awake = """SELECT count(DISTINCT meta->>'periodic') FROM pgjobs.jobs
               WHERE (meta->>'tick')::timestamptz > %s::timestamptz - interval '1 s'"""
    wait_until(lambda: scalar(db, awake, resumed_at) == 3, 60, "a tick of each schedule")
    more_ticks(db, 2, "ticks after the fleet woke")
    for worker in everyone:
        worker.signal(signal.SIGTERM)
    assert [w.wait(60) for w in everyone] == [0, 0, 0]

    every = ticks(db, "every_second")
    assert every == [every[0] + timedelta(seconds=i) for i in range(len(every))], "a gap"
    missed = [t for t in every if stopped_at < t <= resumed_at - timedelta(seconds=1)]
    assert len(missed) >= scale(4, 8) - 2  # caught up after the fleet pause
    for schedule in ("latest_second", "skip_second"):
        kept = ticks(db, schedule)
        assert not set(kept) & set(missed), f"{schedule} enqueued a missed tick"
    # The stopped worker's tick transaction was ended by the server; it reconnected.
    assert "maintenance connection failed" in stalling.log()
