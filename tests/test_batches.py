"""Batches: counters, callbacks exactly once, nesting, growth from inside, empty batches.
Many batches completing concurrently across worker processes are in
tests/chaos/test_batch_counters.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest
from psycopg import sql

import pgjobs
from pgjobs.core import outcomes
from pgjobs.db import batches, leases
from pgjobs.testing import drain
from pgjobs.worker.context import JobContext
from tests.chaos.harness import claim, complete_many
from tests.helpers import harness_database, query, scalar
from tests.workerapps.batchapp import HARNESS, app, callback, member, spawner

pytestmark = pytest.mark.xdist_group("worker")


@pytest.fixture
def dsn(fresh_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    yield from harness_database(fresh_dsn, monkeypatch, HARNESS, app)


def callbacks(dsn: str) -> list[tuple[int, str, str]]:
    return [(r[0], r[1], r[2]) for r in query(
        dsn, "SELECT batch_id, event, tag FROM callbacks ORDER BY batch_id, event")]


def with_callbacks(batch: pgjobs.Batch, tag: str) -> None:
    batch.on_complete(callback, tag=tag)
    batch.on_success(callback, tag=tag)
    batch.on_death(callback, tag=tag)


def test_success_fires_complete_then_success_once_with_a_snapshot(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        batch = app.batch(conn, description="newsletter 42")
        with_callbacks(batch, "b")
        results = batch.enqueue_many(member, [{"n": i} for i in range(5)])
        batch.enqueue(member, n=5, fail_first=True)
        assert batch.status().total == 6 and batch.status().pending == 6
    assert [r.duplicate for r in results] == [False] * 5
    drain(app)
    assert callbacks(dsn) == [(batch.id, "complete", "b"), (batch.id, "success", "b")]
    status = app.batch_status(None, batch.id)
    assert (status.state, status.total, status.pending, status.succeeded, status.failed,
            status.dead) == ("succeeded", 6, 0, 6, 0, 0)
    snapshot = scalar(dsn, "SELECT snapshot FROM callbacks WHERE event = 'success'")
    assert snapshot["description"] == "newsletter 42" and snapshot["succeeded"] == 6


def test_a_dead_job_fires_death_once_and_success_never(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        batch = app.batch(conn)
        with_callbacks(batch, "d")
        batch.enqueue_many(member, [{"n": 1}, {"n": 2, "die": True}, {"n": 3, "die": True}])
    drain(app)
    events = [event for _, event, _ in callbacks(dsn)]
    assert sorted(events) == ["complete", "death"]
    status = app.batch_status(None, batch.id)
    assert (status.state, status.pending, status.succeeded, status.failed, status.dead) == (
        "complete", 2, 1, 2, 2)


def test_cancelled_counts_as_succeeded_and_expired_as_dead(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        batch = app.batch(conn)
        with_callbacks(batch, "c")
        a, b = batch.enqueue_many(member, [{"n": 1}, {"n": 2}])
    # An operator cancels one by hand; the other expires before it runs.
    query(dsn, "UPDATE pgjobs.jobs SET state = 'cancelled', finished_at = now() WHERE id = %s",
          a.id)
    query(dsn, "UPDATE pgjobs.jobs SET expires_at = now() - interval '1 s' WHERE id = %s", b.id)
    drain(app)
    assert sorted(e for _, e, _ in callbacks(dsn)) == ["complete", "death"]
    status = app.batch_status(None, batch.id)
    assert (status.succeeded, status.dead, status.pending) == (1, 1, 1)


def test_an_empty_batch_succeeds_at_commit_and_a_rolled_back_one_never_existed(
    dsn: str,
) -> None:
    with psycopg.connect(dsn) as conn:
        empty = app.batch(conn, description="nothing to do")
        with_callbacks(empty, "e")
        assert callbacks(dsn) == []  # nothing fires before commit
    with psycopg.connect(dsn) as conn:
        gone = app.batch(conn)
        with_callbacks(gone, "g")
        gone.enqueue(member, n=1)
        conn.rollback()
    drain(app)
    assert callbacks(dsn) == [(empty.id, "complete", "e"), (empty.id, "success", "e")]
    assert scalar(dsn, "SELECT count(*) FROM pgjobs.batches WHERE id = %s", gone.id) == 0
    assert scalar(dsn, "SELECT count(*) FROM pgjobs.jobs WHERE task = 'member'") == 0


def test_a_parent_waits_for_its_children(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        parent = app.batch(conn, description="parent")
        with_callbacks(parent, "parent")
        parent.enqueue(member, n=0)
        for name in ("a", "b"):
            child = parent.child(description=name)
            with_callbacks(child, name)
            child.enqueue_many(member, [{"n": 1}, {"n": 2}])
    # Run only the parent's own job first: the parent must not complete yet.
    parent_job = scalar(dsn, "SELECT id FROM pgjobs.jobs WHERE batch_id = %s", parent.id)
    query(dsn, "UPDATE pgjobs.jobs SET run_at = now() + interval '1 hour' "
               "WHERE batch_id <> %s", parent.id)
    drain(app)
    assert scalar(dsn, "SELECT state FROM pgjobs.jobs WHERE id = %s", parent_job) == "succeeded"
    assert callbacks(dsn) == []
    query(dsn, "UPDATE pgjobs.jobs SET run_at = now() WHERE state = 'available'")
    drain(app)
    assert sorted(tag for _, _, tag in callbacks(dsn)) == [
        "a", "a", "b", "b", "parent", "parent"]
    # In enqueue order, each parent event follows the same event of every child.
    order = [(r[0], r[1]) for r in query(
        dsn, "SELECT args->>'tag', meta->'batch'->>'event' FROM pgjobs.jobs "
             "WHERE task = 'callback' ORDER BY id")]
    for event in ("complete", "success"):
        parent_at = order.index(("parent", event))
        assert all(order.index((child, event)) < parent_at for child in ("a", "b"))
    assert app.batch_status(None, parent.id).state == "succeeded"


def test_a_job_can_add_jobs_to_its_own_batch_while_it_runs(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        batch = app.batch(conn)
        with_callbacks(batch, "grow")
        batch.enqueue(spawner, extra=3)
    drain(app)
    assert [e for _, e, _ in callbacks(dsn)] == ["complete", "success"]
    status = app.batch_status(None, batch.id)
    assert (status.total, status.succeeded) == (4, 4)
    assert scalar(dsn, "SELECT count(*) FROM runs") == 3


def test_a_succeeded_batch_takes_no_more_jobs(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        batch = app.batch(conn)
        batch.enqueue(member, n=1)
    drain(app)
    with psycopg.connect(dsn) as conn:
        late = app.batch(conn, batch_id=batch.id)
        with pytest.raises(pgjobs.BatchFinished):
            late.on_success(callback, tag="late")
        conn.rollback()
        with pytest.raises(pgjobs.BatchFinished, match="already succeeded"):
            late.enqueue(member, n=2)


def test_batches_need_a_transaction_and_late_callbacks_are_refused(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(
        pgjobs.ConfigurationError, match="inside a transaction"
    ):
        app.batch(conn)
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        batch = app.batch(conn)  # an explicit transaction on an autocommit connection
        batch.enqueue(member, n=1, die=True)
    drain(app)
    with psycopg.connect(dsn) as conn:
        again = app.batch(conn, batch_id=batch.id)
        with pytest.raises(pgjobs.BatchFinished, match="death event has already fired"):
            again.on_death(callback, tag="late")
        conn.rollback()
        again.on_success(callback, tag="still possible")  # success has not happened


def test_the_counters_trigger_runs_for_a_success_but_not_for_a_claim(dsn: str) -> None:
    """A claim (available -> running) moves no counter, so the trigger is left out of it
    (revision 0011): a claim of three batch jobs calls it never, their success once
    each. Counted in the transaction's own function statistics."""
    with psycopg.connect(dsn) as conn:
        batch = app.batch(conn)
        batch.enqueue_many(member, [{"n": n} for n in range(3)])
    calls = ("SELECT coalesce(sum(calls), 0) FROM pg_stat_xact_user_functions "
             "WHERE funcname = 'jobs_batch_progress'")
    with psycopg.connect(dsn) as conn:
        conn.execute("SET LOCAL track_functions = 'pl'")
        claimed = claim(conn, limit=3)
        assert len(claimed) == 3
        assert scalar_in(conn, calls) == 0
        conn.execute(sql.SQL("UPDATE {} SET state = 'succeeded', finished_at = now(), "
                             "lease_token = NULL, lease_expires_at = NULL "
                             "WHERE id = ANY(%s)").format(
            sql.Identifier(app.queries.schema, "jobs")), ([c.id for c in claimed],))
        assert scalar_in(conn, calls) == 3
    assert app.batch_status(None, batch.id).succeeded == 3


def test_a_flush_of_plain_successes_counts_each_batch_once_and_exactly(dsn: str) -> None:
    """The workers' common flush appends one delta row per batch (revision 0011), not one
    per job, and its counts are the trigger's: a job that had failed before leaves the
    failed count as it succeeds. Jobs of two batches and one of none, in one statement."""
    with psycopg.connect(dsn) as conn:
        first, second = app.batch(conn), app.batch(conn)
        with_callbacks(first, "first")
        first.enqueue_many(member, [{"n": n} for n in range(4)])
        second.enqueue_many(member, [{"n": n} for n in range(2)])
        member.enqueue(conn, n=-1)
    with psycopg.connect(dsn, autocommit=True) as conn:
        claimed = claim(conn, limit=7)
        retried = next(c for c in claimed if c.job.batch_id == first.id)
        failed = outcomes.failure(retried.job, ValueError("once"), lambda attempt: 0.0)
        assert failed.kind == outcomes.RETRY
        assert complete_many(conn, retried, failed) == {retried.id}
        assert app.batch_status(None, first.id).failed == 1
        conn.execute(batches.fold(app.queries, [first.id]).text,
                     {"ids": [first.id]})  # the failure's delta folded: a clean slate
        again = claim(conn, limit=1)
        assert [c.id for c in again] == [retried.id]
        rest = [c for c in claimed if c.id != retried.id] + again
        written = leases.complete_succeeded(app.queries,
                                            [(c.id, c.job.lease_token) for c in rest])
        assert written.run(conn) == {c.id for c in rest}
        deltas = conn.execute(sql.SQL(
            "SELECT batch_id, pending, succeeded, failed FROM {} ORDER BY batch_id").format(
            sql.Identifier(app.queries.schema, "batch_deltas"))).fetchall()
    assert deltas == [(first.id, -4, 4, -1), (second.id, -2, 2, 0)]
    for batch_id, total in ((first.id, 4), (second.id, 2)):  # exact before the fold too
        status = app.batch_status(None, batch_id)
        assert (status.pending, status.succeeded, status.failed) == (0, total, 0)
    drain(app)  # folds: the callbacks fire once
    assert callbacks(dsn) == [(first.id, "complete", "first"), (first.id, "success", "first")]
    assert app.batch_status(None, first.id).state == "succeeded"


def scalar_in(conn: psycopg.Connection[object], statement: str) -> object:
    row = conn.execute(statement).fetchone()
    assert row is not None
    return row[0]


def test_concurrent_outcome_flushes_over_shared_batches_never_deadlock(dsn: str) -> None:
    """Four flushes at a time, each over jobs of the same batches in opposite orders (a
    parent batch included): a flush appends counter deltas and locks no batch row, so
    none waits in a cycle. Run without the completer's retry, so a deadlock would surface
    here as DeadlockDetected."""
    batches, per, threads, rounds = 6, 24, 4, 3
    with psycopg.connect(dsn) as conn:
        parent = app.batch(conn, description="parent")
        parent.enqueue(member, n=-1)
        ids = []
        for b in range(batches):
            batch = parent.child(description=f"b{b}") if b % 2 else app.batch(conn)
            batch.enqueue_many(member, [{"n": n} for n in range(per * rounds)])
            ids.append(batch.id)
        conn.commit()
    with psycopg.connect(dsn, autocommit=True) as conn:
        claimed = claim(conn, limit=batches * per * rounds + 1)
    by_batch: dict[int, list[JobContext]] = {}
    for ctx in claimed:
        by_batch.setdefault(ctx.job.batch_id or 0, []).append(ctx)
    deadlocks: list[str] = []
    success = outcomes.Outcome(outcomes.SUCCEEDED, result="1")

    def flush(k: int, r: int, start: threading.Barrier) -> None:
        # Thread k takes its share of every batch; even threads go up the batch ids,
        # odd ones down, so their flushes lock the same rows in opposite orders.
        order = sorted(by_batch, reverse=bool(k % 2))
        mine = [ctx for b in order
                for ctx in by_batch[b][r * per:(r + 1) * per][k::threads]]
        rows = [(ctx.id, ctx.job.lease_token, leases.outcome_row(success)) for ctx in mine]
        with psycopg.connect(dsn, autocommit=True) as conn:
            start.wait()
            try:
                conn.execute(app.queries.job_complete_many, leases.outcomes_param(rows))
            except psycopg.errors.DeadlockDetected as exc:
                deadlocks.append(str(exc))

    for r in range(rounds):
        start = threading.Barrier(threads)
        workers = [threading.Thread(target=flush, args=(k, r, start)) for k in range(threads)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join(60)
    assert deadlocks == []
    parent_job = by_batch[parent.id][0]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(app.queries.job_complete_many, leases.outcomes_param(
            [(parent_job.id, parent_job.job.lease_token, leases.outcome_row(success))]))
    # The counters changed by appending deltas; a worker folds them (here: by hand).
    query(dsn, "SELECT pgjobs.batch_fold(ARRAY(SELECT id FROM pgjobs.batches))")
    states = query(dsn, "SELECT id, pending, succeeded, state FROM pgjobs.batches "
                        "ORDER BY id")
    assert states == [(parent.id, 0, 1, "succeeded")] + [
        (b, 0, per * rounds, "succeeded") for b in ids]


def test_a_callback_is_the_full_job_row_enqueue_would_write(dsn: str) -> None:
    """batch_fire inserts what task.enqueue(...) writes: queue, priority, attempts,
    run_in and expires_in counted from the event, per-key limits; and it notifies the
    app's channel, or nobody for App(notify=False)."""
    quiet = pgjobs.App(dsn=dsn, notify=False)

    @quiet.job(name="limited", queue="quiet", concurrency_key="k:{n}", concurrency_limit=2,
               rate_limit=5, rate_period=60)
    def limited(n: int) -> None: ...

    # A reference made by a producer that does not import the worker code (this App
    # registers no "limited"), notifying like the test app.
    loud = pgjobs.App(dsn=dsn, strict_names=False).task("limited", queue="cb")
    later = limited.options(run_in=timedelta(seconds=30), priority=-3, max_attempts=4,
                            expires_in=timedelta(minutes=5), queue="cb")
    with psycopg.connect(dsn) as conn:
        batch = app.batch(conn)
        batch.on_complete(limited, n=1)  # registered by the App(notify=False)
        batch.on_success(later, n=2)
        batch.on_success(loud, n=3)  # a reference of the notifying App, no limits
        batch.enqueue(member, n=0)
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN pgjobs_pgjobs")
        drain(app, queues=("default",))
        heard = [n.payload for n in listener.notifies(timeout=0.5)]
    rows = {r[0]["n"]: r for r in query(dsn, """
        SELECT args, queue, priority, max_attempts, concurrency_key, concurrency_limit,
               rate_limit, rate_period, round(extract(epoch FROM run_at - created_at)),
               round(extract(epoch FROM expires_at - run_at))
        FROM pgjobs.jobs WHERE task = 'limited' ORDER BY id""")}
    assert rows[1][1:8] == ("quiet", 0, 25, "k:1", 2, 5, timedelta(seconds=60))
    assert rows[2][1:] == ("cb", -3, 4, "k:2", 2, 5, timedelta(seconds=60), 30, 300)
    assert rows[3][1:8] == ("cb", 0, 25, None, None, None, None)
    # Only the notifying app's callback due now woke its queue's workers; the quiet app's
    # callback woke nobody, and one due in 30 s nobody yet.
    assert heard == ["cb"]
