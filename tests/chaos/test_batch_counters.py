"""Batches under concurrent completion: worker processes finishing the jobs of many
batches at once, one of them paused past its lease (its late outcomes are stale), and
duplicate outcome rows sent through the completer's statement.

RELIABILITY.md row: "200 batches x 50 jobs completing concurrently, plus stale duplicate
completions".
"""

from __future__ import annotations

import random
import signal
import time

import psycopg
import pytest

from pgjobs.core import outcomes
from tests.chaos.harness import Fleet, claim, pause, scale, write_outcomes
from tests.helpers import query, scalar, wait_until
from tests.workerapps import batchapp

# The group of the small test this one replaced (tests/test_batches.py).
pytestmark = [pytest.mark.chaos, pytest.mark.xdist_group("worker")]

BATCH_APP = "workerapps.batchapp:app"
LEASE = 2.0
MANUAL = "manual"  # a queue no worker serves: the test completes these jobs itself

# Counters that disagree, in one snapshot, with the jobs they count (or an event fired
# before it was due). Dead jobs stay pending; "failed" counts jobs that failed an attempt
# or died and have not succeeded since. batch_progress gives the exact counters (folded
# plus deltas); an event due but not yet fired (its fold has not run yet) is no error
# here: EVENTS_LAG checks that none is left once every job is done.
MISCOUNTED = """
SELECT b.id, b.total, b.pending, b.succeeded, b.failed, b.dead, b.state,
       j.total, j.done, j.failed, j.dead
FROM pgjobs.batch_progress b CROSS JOIN LATERAL (
    SELECT count(*) AS total,
           count(*) FILTER (WHERE state IN ('succeeded', 'cancelled')) AS done,
           count(*) FILTER (WHERE coalesce((meta->>'batch_failed')::boolean, false)
                              AND state NOT IN ('succeeded', 'cancelled')) AS failed,
           count(*) FILTER (WHERE state IN ('dead', 'expired')) AS dead
    FROM pgjobs.jobs WHERE batch_id = b.id) j
WHERE b.total <> j.total OR b.pending <> j.total - j.done OR b.succeeded <> j.done
   OR b.failed <> j.failed OR b.dead <> j.dead
   OR least(b.total, b.pending, b.succeeded, b.failed, b.dead) < 0
   OR (b.died_at IS NOT NULL AND b.dead = 0)
   OR (b.succeeded_at IS NOT NULL AND b.pending > 0)
"""

# Events that disagree with the counters once everything is folded.
EVENTS_LAG = """
SELECT id, dead, pending, died_at, succeeded_at FROM pgjobs.batches
WHERE (died_at IS NOT NULL) <> (dead > 0) OR (succeeded_at IS NOT NULL) <> (pending = 0)
"""

# A callback job enqueued more than once for one (batch, event).
REFIRED = """
SELECT meta->'batch'->>'id', meta->'batch'->>'event', count(*) FROM pgjobs.jobs
WHERE task = 'callback' GROUP BY 1, 2 HAVING count(*) > 1
"""


def enqueue_batches(dsn: str, rng: random.Random, batches: int, per: int, manual: int
                    ) -> tuple[list[int], set[int]]:
    """``batches`` batches of ``per`` jobs with all three callbacks; ``manual`` jobs of
    each wait in the MANUAL queue. Some jobs fail their first attempt; one job of every
    tenth batch dies. Returns the batch ids and the ids of the batches that die."""
    ids, dying = [], set()
    with psycopg.connect(dsn) as conn:
        for b in range(batches):
            batch = batchapp.app.batch(conn, description=f"b{b}")
            for on in (batch.on_complete, batch.on_success, batch.on_death):
                on(batchapp.callback, tag=f"b{b}")
            dies = b % 10 == 3
            # Every fourth job takes a few tenths of a second, so that a worker paused by
            # the test holds jobs in hand however fast the others run.
            batch.enqueue_many(batchapp.member, [
                {"n": i, "fail_first": i % 7 == 3, "die": dies and i == 5,
                 "sleep": rng.uniform(0.3, 0.6) if i % 4 == 0 else rng.uniform(0, 0.03)}
                for i in range(per - manual)])
            batch.enqueue_many(batchapp.member.options(queue=MANUAL),
                               [{"n": i} for i in range(per - manual, per)])
            conn.commit()
            ids.append(batch.id)
            if dies:
                dying.add(batch.id)
    return ids, dying


def complete_manual_jobs_with_duplicates(dsn: str, rng: random.Random) -> int:
    """Claim a few MANUAL jobs and write their success as the completer does, every row
    twice in one flush; then the same flush again (a retry after a lost connection), and
    stale failures. Only the first write may count. Returns how many were claimed."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        claimed = claim(conn, limit=rng.randint(1, 5), queue=MANUAL)
        if not claimed:
            return 0
        success = outcomes.Outcome(outcomes.SUCCEEDED, result="1")
        flush = [(ctx, success) for ctx in claimed for _ in range(2)]
        rng.shuffle(flush)
        assert sorted(write_outcomes(conn, flush)) == sorted(ctx.id for ctx in claimed)
        assert write_outcomes(conn, flush) == []
        failure = outcomes.Outcome(outcomes.RETRY, delay=0, error={"message": "stale"})
        assert write_outcomes(conn, [(ctx, failure) for ctx in claimed]) == []
    return len(claimed)


@pytest.mark.timeout(scale(180, 900))
def test_concurrent_batches_keep_exact_counters_and_fire_each_callback_once(
    batch_db: str, fleet: Fleet, rng: random.Random
) -> None:
    """Sampled while three workers complete the batches (one of them paused past its
    lease, its late outcomes refused) and the test writes duplicate outcome rows: the
    counters match the jobs in every snapshot and never go negative, and no callback is
    enqueued twice. At the end each batch has its exact counters and its callbacks, each
    enqueued once and run; no flush was refused (a deadlock between flushes is
    retried)."""
    db = batch_db
    batches, per, manual = scale(20, 200), scale(10, 50), scale(2, 5)
    ids, dying = enqueue_batches(db, rng, batches, per, manual)
    args = ("--concurrency", "8", "--poll-interval", "0.2", "--lease", str(LEASE))
    workers = [fleet.spawn(*args, app=BATCH_APP) for _ in range(3)]
    wait_until(lambda: all(w.started() for w in workers), 60, "the workers to start")

    problems: list[tuple[object, ...]] = []
    samples, completed_by_test, pauses = 0, 0, scale(1, 3)
    expected_callbacks = 2 * batches  # complete, and success or death

    def sample() -> bool:
        nonlocal samples
        problems.extend(query(db, MISCOUNTED) + query(db, REFIRED))
        samples += 1
        # Distinct events: a callback whose worker was paused past its lease runs again.
        return scalar(db, "SELECT count(DISTINCT (batch_id, event)) FROM public.callbacks"
                      ) >= expected_callbacks

    deadline = time.monotonic() + scale(120, 600)
    paused = tries = 0
    while not sample():
        assert time.monotonic() < deadline, "timed out waiting for every batch's callbacks"
        completed_by_test += complete_manual_jobs_with_duplicates(db, rng)
        if paused >= pauses:
            continue
        # Paused with jobs in hand, past its lease: they are reclaimed and run elsewhere,
        # and whatever it writes when it wakes is stale. Whether it still holds a job is
        # checked once it is stopped (and a flush it had already sent has committed), since
        # its short jobs may finish at any moment before that.
        victim = workers[tries % len(workers)]
        tries += 1
        victim.signal(signal.SIGSTOP)
        pause(0.1)
        if not running_jobs(db, victim.pid):
            victim.signal(signal.SIGCONT)
            continue
        until = time.monotonic() + 2.5 * LEASE
        while time.monotonic() < until:
            sample()
            pause(0.1)
        victim.signal(signal.SIGCONT)
        paused += 1
    assert problems == [], "counters disagreed with the jobs, or a callback fired twice"
    assert samples > 1 and completed_by_test == batches * manual and paused >= 1
    wait_until(lambda: scalar(db, "SELECT count(*) FROM pgjobs.jobs WHERE state IN "
                                  "('available', 'running')") == 0, 120, "all jobs done")
    # The workers fold what is left within their next sweep (a second).
    wait_until(lambda: scalar(db, "SELECT count(*) FROM pgjobs.batch_deltas") == 0, 30,
               "every delta folded")
    assert query(db, MISCOUNTED) == [] and query(db, REFIRED) == []
    assert query(db, EVENTS_LAG) == []

    rows = query(db, "SELECT id, total, pending, succeeded, failed, dead, state "
                     "FROM pgjobs.batches ORDER BY id")
    for batch_id, *counters in rows:
        assert tuple(counters) == ((per, 1, per - 1, 1, 1, "complete") if batch_id in dying
                                   else (per, 0, per, 0, 0, "succeeded")), batch_id
    # Each callback enqueued once, and run: at least once, since a worker whose lease
    # lapsed (paused, or starved on a loaded machine) may have run one that was then
    # reclaimed and run again (the handler's record is not fenced by the lease).
    expected = [(b, ["complete", "death"] if b in dying else ["complete", "success"])
                for b in ids]
    enqueued = query(db, "SELECT (meta->'batch'->>'id')::bigint, "
                         "array_agg(meta->'batch'->>'event' ORDER BY meta->'batch'->>'event') "
                         "FROM pgjobs.jobs WHERE task = 'callback' GROUP BY 1 ORDER BY 1")
    assert enqueued == expected
    assert scalar(db, "SELECT count(*) FROM pgjobs.jobs WHERE task = 'callback' "
                      "AND state <> 'succeeded'") == 0
    ran = query(db, "SELECT batch_id, array_agg(DISTINCT event ORDER BY event) "
                    "FROM public.callbacks GROUP BY 1 ORDER BY 1")
    assert ran == expected
    # Paused jobs were reclaimed and the paused worker's outcomes refused, while every
    # worker kept running and no flush was refused by the database.
    assert scalar(db, "SELECT sum(recoveries) FROM pgjobs.jobs") > 0
    assert all(w.alive() for w in workers)
    for worker in workers:
        assert "refused by the database" not in worker.log()


def running_jobs(dsn: str, pid: int) -> int:
    return int(scalar(dsn, "SELECT count(*) FROM pgjobs.jobs j JOIN pgjobs.workers w "
                           "ON w.id = j.worker_id WHERE j.state = 'running' AND w.pid = %s",
                      pid))
