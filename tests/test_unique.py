"""Unique jobs: duplicates, hold lifetimes, expiry, and reliable push. Concurrent
enqueuers with rollbacks are in tests/chaos/test_unique_keys.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

import pgjobs
from pgjobs.core import outcomes
from pgjobs.db import leases
from pgjobs.testing import drain
from tests.helpers import harness_database, query, scalar
from tests.workerapps.batchapp import HARNESS, app, callback, member, unique_start, unique_success

pytestmark = pytest.mark.xdist_group("worker")


@pytest.fixture
def dsn(fresh_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    yield from harness_database(fresh_dsn, monkeypatch, HARNESS, app)


def holders(dsn: str) -> dict[str, int]:
    return {r[0]: r[1] for r in query(dsn, "SELECT key, job_id FROM pgjobs.unique_keys")}


def test_duplicates_return_the_holder_until_it_succeeds(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        first = unique_success.enqueue(conn, key="a")
        again = unique_success.enqueue(conn, key="a")
        other = unique_success.enqueue(conn, key="b")
    assert not first.duplicate and again.duplicate and again.id == first.id
    assert not other.duplicate and other.id != first.id
    with pytest.raises(pgjobs.DuplicateJob) as raised:
        unique_success.options(on_duplicate="raise").enqueue(None, key="a")
    assert raised.value.holder_id == first.id
    drain(app)
    assert holders(dsn) == {}
    fresh = unique_success.enqueue(None, key="a")
    assert not fresh.duplicate and fresh.id != first.id


def test_enqueue_many_dedupes_within_the_call_and_against_holds(dsn: str) -> None:
    held = unique_success.enqueue(None, key="held")
    results = unique_success.enqueue_many(
        None, [{"key": "x"}, {"key": "held"}, {"key": "x"}, {"key": "y"}])
    assert [r.duplicate for r in results] == [False, True, True, False]
    assert results[1].id == held.id and results[2].id == results[0].id
    assert scalar(dsn, "SELECT count(*) FROM pgjobs.jobs") == 3


def test_explicit_key_and_the_default_key_include_queue_and_args(dsn: str) -> None:
    keyed = unique_success.options(unique_key="newsletter:42")
    a = keyed.enqueue(None, key="one")
    b = keyed.enqueue(None, key="two")  # same explicit key, other args: still a duplicate
    assert b.duplicate and b.id == a.id
    c = unique_success.options(queue="other").enqueue(None, key="one")
    d = unique_success.enqueue(None, key="one")
    assert not c.duplicate and not d.duplicate and c.id != d.id


def test_death_releases_the_hold(dsn: str) -> None:
    failing = member.options(unique_key="m", max_attempts=2)
    first = failing.enqueue(None, n=1, die=True)
    drain(app, concurrency=1)  # both attempts fail: dead
    assert scalar(dsn, "SELECT state FROM pgjobs.jobs WHERE id = %s", first.id) == "dead"
    assert holders(dsn) == {}
    assert not failing.enqueue(None, n=2).duplicate


def test_retry_in_progress_keeps_the_hold(dsn: str) -> None:
    job = member.options(unique_key="r").enqueue(None, n=1, fail_first=True)
    # Simulate an attempt that failed and waits for its retry.
    query(dsn, "UPDATE pgjobs.jobs SET errors = '[{\"type\": \"X\"}]', attempt = 1, "
               "run_at = now() + interval '1 hour' WHERE id = %s", job.id)
    again = member.options(unique_key="r").enqueue(None, n=1)
    assert again.duplicate and again.id == job.id


def test_unique_until_start_releases_at_claim_and_success_holds_while_running(
    dsn: str,
) -> None:
    start = unique_start.enqueue(None, key="s")
    success = unique_success.enqueue(None, key="s")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(app.queries.job_claim, {
            "queues": ["default"], "limit": 10, "lease": timedelta(seconds=30),
            "worker_id": None})
    assert holders(dsn) == {f"unique_success:default:{key_digest('s')}": success.id}
    again_start = unique_start.enqueue(None, key="s")
    again_success = unique_success.enqueue(None, key="s")
    assert not again_start.duplicate and again_start.id != start.id
    assert again_success.duplicate and again_success.id == success.id


CLAIM_ALL = {"queues": ["default"], "limit": 50, "lease": timedelta(seconds=30),
             "worker_id": None}


@pytest.mark.parametrize("statement", ["job_claim", "job_claim_limited"])
def test_a_caller_holding_a_duplicate_open_locks_nothing(dsn: str, statement: str) -> None:
    """A duplicate enqueue reads the holder without locking its hold: while the caller's
    transaction stays open, a claim starts the holder at once (releasing its start hold)
    and the holder's completion (which deletes a success hold) does not wait either."""
    held = unique_start.enqueue(None, key="busy")
    done = unique_success.enqueue(None, key="done")
    free = [member.enqueue(None, n=n).id for n in range(3)]
    with psycopg.connect(dsn) as caller, \
            psycopg.connect(dsn, autocommit=True, options="-c lock_timeout=5s") as worker:
        assert unique_start.enqueue(caller, key="busy").duplicate  # open
        assert unique_success.enqueue(caller, key="done").duplicate  # open
        claimed = worker.execute(getattr(app.queries, statement), CLAIM_ALL).fetchall()
        assert sorted(row[0] for row in claimed) == sorted([*free, held.id, done.id])
        token = next(row[6] for row in claimed if row[0] == done.id)
        written = worker.execute(app.queries.job_complete_many, leases.outcomes_param(
            [(done.id, token, leases.outcome_row(outcomes.Outcome(outcomes.SUCCEEDED)))])
        ).fetchall()
        assert written == [(done.id,)]  # no lock_timeout: nothing waited for the caller
        caller.commit()
    assert holders(dsn) == {}


def test_claims_and_a_caller_taking_start_holds_in_another_order_never_deadlock(
    dsn: str,
) -> None:
    """Jobs enqueued in descending key order are claimed in that order while a caller
    enqueues duplicates of the same keys in ascending order in one transaction: the
    claim skips the holds the caller has locked instead of waiting in a cycle."""
    keys, deadlocks = 12, []
    for _ in range(8):
        for k in reversed(range(keys)):
            unique_start.enqueue(None, key=f"k{k:02d}")
        start = threading.Barrier(2)

        def claimer(start: threading.Barrier) -> None:
            with psycopg.connect(dsn, autocommit=True) as conn:
                start.wait()
                try:
                    conn.execute(app.queries.job_claim, CLAIM_ALL)
                except psycopg.errors.DeadlockDetected:
                    deadlocks.append("claim")

        def caller(start: threading.Barrier) -> None:
            with psycopg.connect(dsn) as conn:
                start.wait()
                try:
                    for k in range(keys):
                        unique_start.enqueue(conn, key=f"k{k:02d}")
                    conn.commit()
                except psycopg.errors.DeadlockDetected:
                    deadlocks.append("enqueue")
                    conn.rollback()

        threads = [threading.Thread(target=claimer, args=(start,)),
                   threading.Thread(target=caller, args=(start,))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        query(dsn, "DELETE FROM pgjobs.jobs")
    assert deadlocks == []
    assert holders(dsn) == {}


def key_digest(value: str) -> str:
    import hashlib
    import json

    text = json.dumps({"key": value}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def test_an_elapsed_hold_is_taken_over_and_the_old_job_cannot_release_the_new_one(
    dsn: str,
) -> None:
    old = unique_success.enqueue(None, key="t")
    query(dsn, "UPDATE pgjobs.unique_keys SET expires_at = now() - interval '1 s'")
    new = unique_success.enqueue(None, key="t")
    assert not new.duplicate and new.id != old.id
    query(dsn, "UPDATE pgjobs.jobs SET state = 'cancelled', finished_at = now() "
               "WHERE id = %s", old.id)
    assert list(holders(dsn).values()) == [new.id]


def test_expiry_releases_the_hold(dsn: str) -> None:
    job = unique_success.options(expires_in=timedelta(hours=1)).enqueue(None, key="e")
    query(dsn, "UPDATE pgjobs.jobs SET expires_at = now() - interval '1 s' WHERE id = %s",
          job.id)
    assert drain(app) == {}
    assert scalar(dsn, "SELECT state FROM pgjobs.jobs WHERE id = %s", job.id) == "expired"
    assert holders(dsn) == {}


class FlakyConnection(psycopg.Connection[Any]):
    """Fails once per test at a chosen point: before the statement, or after the commit
    succeeded on the server (the client never learns the outcome)."""

    mode = "after_commit"
    armed = threading.Event()

    def commit(self) -> None:
        super().commit()
        if self.mode == "after_commit" and self.armed.is_set():
            self.armed.clear()
            raise psycopg.OperationalError("connection lost after COMMIT (injected)")

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        # Every statement pgjobs sends runs on a cursor of its own (conn.execute too).
        if self.mode == "before" and self.armed.is_set():
            self.armed.clear()
            raise psycopg.OperationalError("connection lost (injected)")
        return super().cursor(*args, **kwargs)


@pytest.mark.parametrize("mode", ["after_commit", "before"])
def test_reliable_push_retries_without_a_duplicate(dsn: str, mode: str) -> None:
    flaky = pgjobs.App(dsn=dsn)
    flaky._pool = ConnectionPool(dsn, min_size=1, max_size=2, connection_class=FlakyConnection,
                                 open=True)
    FlakyConnection.mode = mode
    task = flaky.task("member")
    # A reference reads its task's definition from the registry first (and keeps it):
    # read it before the failures are armed, so that they hit the push itself.
    flaky._definition(None, "member")
    try:
        FlakyConnection.armed.set()
        single = task.enqueue(n=1)
        FlakyConnection.armed.set()
        many = task.enqueue_many(None, [{"n": 2}, {"n": 3}])
        assert not FlakyConnection.armed.is_set()  # the failure really happened
    finally:
        flaky.close()
    ids = [r[0] for r in query(dsn, "SELECT id FROM pgjobs.jobs ORDER BY id")]
    assert ids == [single.id, many[0].id, many[1].id]
    assert scalar(dsn, "SELECT count(*) FROM pgjobs.enqueue_receipts") == 2


def test_batch_callbacks_can_carry_options(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        batch = app.batch(conn)
        batch.on_success(callback.options(queue="callbacks", priority=-5), tag="opts")
    row = query(dsn, "SELECT queue, priority FROM pgjobs.jobs WHERE task = 'callback'")
    assert row == [("callbacks", -5)]


def test_duplicate_job_names_the_key_of_the_duplicate_row(dsn: str) -> None:
    raising = unique_success.options(on_duplicate="raise")
    with psycopg.connect(dsn) as conn, pytest.raises(pgjobs.DuplicateJob) as raised:
        raising.enqueue_many(conn, [{"key": "x"}, {"key": "x"}, {"key": "y"}])
    assert raised.value.key == f"unique_success:default:{key_digest('x')}"


def test_a_holder_committed_after_the_snapshot_is_read_again(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The duplicate's statement waits for the holder's uncommitted hold, then cannot see
    it in its snapshot: it reads the holder in a new one. If that holder has ended by
    then, the key is free and the duplicate is enqueued as a new job instead."""
    from pgjobs.db import enqueue

    def race(ended: bool) -> tuple[int, pgjobs.Enqueued]:
        key = f"race-{ended}"
        holder = psycopg.connect(dsn)
        first = unique_success.enqueue(holder, key=key)  # its hold, uncommitted
        if ended:
            real = enqueue.Statement._holders

            def the_holder_ends_first(self: Any, missing: list[int]) -> Any:
                query(dsn, "DELETE FROM pgjobs.unique_keys WHERE key = %s", full_key(key))
                return real(self, missing)

            monkeypatch.setattr(enqueue.Statement, "_holders", the_holder_ends_first)
        result: list[pgjobs.Enqueued] = []
        thread = threading.Thread(target=lambda: result.append(
            unique_success.enqueue(None, key=key)))
        thread.start()
        wait_for_lock(dsn)
        holder.commit()
        holder.close()
        thread.join(30)
        monkeypatch.undo()
        return first.id, result[0]

    holder_id, duplicate = race(ended=False)
    assert duplicate == pgjobs.Enqueued(holder_id, duplicate=True)
    holder_id, again = race(ended=True)
    assert not again.duplicate and again.id != holder_id
    assert holders(dsn)[full_key("race-True")] == again.id


def wait_for_lock(dsn: str) -> None:
    """Until another backend waits on a lock (the duplicate's insert, on the hold)."""
    from tests.helpers import wait_until

    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM pg_stat_activity "
                                   "WHERE wait_event_type = 'Lock'") == 1, 30, "a lock wait")


def full_key(key: str) -> str:
    """The unique key of a unique_success job with this argument."""
    from pgjobs.core.options import unique_key

    full = unique_key(unique_success.name, unique_success.opts, {"key": key})
    assert full is not None
    return full
