"""Unique keys under contention: many enqueuers, rolled-back transactions, and workers
completing the holders (releasing their keys) all at once.

RELIABILITY.md row: "50 concurrent enqueuers on 20 unique keys, 30% of transactions
rolled back".
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta

import psycopg
import pytest

from tests.chaos.harness import Fleet, scale
from tests.helpers import query, scalar, wait_until
from tests.workerapps import batchapp

# The group of the small test this one replaced (tests/test_unique.py).
pytestmark = [pytest.mark.chaos, pytest.mark.xdist_group("worker")]

BATCH_APP = "workerapps.batchapp:app"
# The key is derived from the arguments ({"n": key number}) and held until the job ends.
KEYED = batchapp.member.options(unique_for=timedelta(hours=1))

# One statement, three views of "at most one live job per key": two live jobs with one
# key; a hold whose job has ended (a leak: the key could never be enqueued again); a live
# keyed job without its hold.
VIOLATIONS = """
SELECT 'two live jobs', unique_key, array_agg(id ORDER BY id) FROM pgjobs.jobs
WHERE unique_key IS NOT NULL AND state IN ('available', 'running')
GROUP BY unique_key HAVING count(*) > 1
UNION ALL
SELECT 'hold of an ended job', u.key, ARRAY[u.job_id] FROM pgjobs.unique_keys u
LEFT JOIN pgjobs.jobs j ON j.id = u.job_id
WHERE j.id IS NULL OR j.state NOT IN ('available', 'running')
UNION ALL
SELECT 'live job without its hold', j.unique_key, ARRAY[j.id] FROM pgjobs.jobs j
WHERE j.unique_key IS NOT NULL AND j.state IN ('available', 'running')
  AND NOT EXISTS (SELECT FROM pgjobs.unique_keys u
                  WHERE u.key = j.unique_key AND u.job_id = j.id)
"""


@dataclass
class Ledger:
    """What the enqueuers' callers were told, by the fate of their transaction."""

    committed: list[tuple[int, int, bool]] = field(default_factory=list)  # (n, id, dup)
    rolled_back: list[int] = field(default_factory=list)  # ids of new jobs rolled back
    errors: list[BaseException] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def enqueuer(dsn: str, rng: random.Random, keys: int, transactions: int,
             ledger: Ledger) -> None:
    """Transactions of one to three keys (in random order, in one statement), 30% of
    them rolled back."""
    try:
        with psycopg.connect(dsn) as conn:
            for _ in range(transactions):
                ns = rng.sample(range(keys), rng.randint(1, 3))
                results = KEYED.enqueue_many(conn, [{"n": n} for n in ns])
                if rng.random() < 0.3:
                    conn.rollback()
                    with ledger.lock:
                        ledger.rolled_back += [r.id for r in results if not r.duplicate]
                else:
                    conn.commit()
                    with ledger.lock:
                        ledger.committed += [(n, r.id, r.duplicate)
                                             for n, r in zip(ns, results, strict=True)]
                time.sleep(rng.uniform(0, 0.02))  # the workers get a chance to finish some
    except BaseException as exc:  # surfaced by the test
        with ledger.lock:
            ledger.errors.append(exc)


@pytest.mark.timeout(scale(120, 600))
def test_concurrent_enqueuers_with_rollbacks_keep_one_live_job_per_key(
    batch_db: str, fleet: Fleet, rng: random.Random
) -> None:
    """Enqueuers race on a few keys while two workers complete the holders: sampled all
    along, no key ever has two live jobs, a leaked hold, or a live job without its hold.
    Every committed caller got a job that exists (its own or the holder), rolled-back
    jobs never exist, and every committed job ran once."""
    db = batch_db
    enqueuers, keys, transactions = scale(10, 50), scale(6, 20), scale(12, 40)
    workers = [fleet.spawn("--concurrency", "4", "--poll-interval", "0.2", app=BATCH_APP)
               for _ in range(2)]
    wait_until(lambda: all(w.started() for w in workers), 60, "the workers to start")
    ledger = Ledger()
    threads = [threading.Thread(target=enqueuer, daemon=True, args=(
        db, random.Random(rng.random()), keys, transactions, ledger)) for _ in range(enqueuers)]
    for thread in threads:
        thread.start()
    violations, samples = [], 0
    while any(t.is_alive() for t in threads):
        violations += query(db, VIOLATIONS)
        samples += 1
    for thread in threads:
        thread.join()
    assert ledger.errors == [], [f"{e!r}: {e.diag.message_detail}" for e in ledger.errors
                                 if isinstance(e, psycopg.Error)]
    assert violations == [], "a key had more than one live job"
    assert samples > 1
    wait_until(lambda: scalar(db, "SELECT count(*) FROM pgjobs.jobs WHERE state IN "
                                  "('available', 'running')") == 0, scale(60, 180),
               "every job to finish")
    assert query(db, VIOLATIONS) == []

    jobs = {job_id: (state, n) for job_id, state, n in query(
        db, "SELECT id, state, (args->>'n')::int FROM pgjobs.jobs")}
    new = {job_id for _, job_id, duplicate in ledger.committed if not duplicate}
    # Nothing silently dropped: exactly the committed new jobs exist, and each succeeded.
    assert set(jobs) == new
    assert {state for state, _ in jobs.values()} == {"succeeded"}
    assert not set(ledger.rolled_back) & set(jobs)
    # Every committed caller, new or duplicate, holds the id of a committed job of its key.
    wrong = [(n, job_id) for n, job_id, _ in ledger.committed if jobs[job_id][1] != n]
    assert wrong == []
    assert any(duplicate for *_, duplicate in ledger.committed)
    # Holds were released by the workers and won again: keys ran several times.
    assert scalar(db, "SELECT max(c) FROM (SELECT count(*) AS c FROM pgjobs.jobs "
                      "GROUP BY unique_key) k") > 1
    assert scalar(db, "SELECT count(*) FROM pgjobs.unique_keys") == 0
    runs = dict(query(db, "SELECT job_id, count(*) FROM public.runs GROUP BY 1"))
    assert runs == dict.fromkeys(jobs, 1)
