"""Retention: finished jobs, emptied batches and dead workers' rows are deleted after
their period, in bounded statements, by one worker at a time, without touching anything
a running batch, a unique hold or a live worker still needs."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
import pytest

import pgjobs
from pgjobs import WorkerConfig
from pgjobs.testing import drain
from pgjobs.worker.config import Retention
from pgjobs.worker.maintenance.prune import Pruner, prune_lock
from tests.helpers import query, scalar
from tests.test_cli import run
from tests.test_enqueue import register

DAY = 86_400.0


def prune(dsn: str, retention: Retention | None = None, limit: int = 5000) -> Counter[str]:
    """One pass of the pruner on a connection of its own."""
    pruner = Pruner(pgjobs.App(dsn=dsn).queries, retention or Retention(), limit=limit)

    async def run_once() -> Counter[str]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            return await pruner.run_once(conn)

    return asyncio.run(run_once())


def finished_job(dsn: str, state: str, age: timedelta | None, **columns: Any) -> int:
    """A job row in ``state``, finished ``age`` ago (None: not finished)."""
    names = ["task", "state", "finished_at", *columns]
    values = ["t", state, None, *columns.values()]
    rows = query(
        dsn,
        f"INSERT INTO pgjobs.jobs ({', '.join(names)}) "
        f"VALUES ({', '.join(['%s'] * len(names))}) RETURNING id",
        *values,
    )
    job_id = int(rows[0][0])
    if age is not None:
        query(dsn, "UPDATE pgjobs.jobs SET finished_at = now() - %s WHERE id = %s", age, job_id)
    return job_id


def job_ids(dsn: str) -> set[int]:
    return {int(r[0]) for r in query(dsn, "SELECT id FROM pgjobs.jobs")}


def test_each_state_is_kept_for_its_own_period(fresh_dsn: str) -> None:
    hours = timedelta(hours=1)
    days = timedelta(days=2)
    weeks = timedelta(days=8)
    kept = {
        finished_job(fresh_dsn, "succeeded", hours),
        finished_job(fresh_dsn, "cancelled", hours),
        finished_job(fresh_dsn, "dead", days),
        finished_job(fresh_dsn, "expired", days),
        finished_job(fresh_dsn, "available", None),
    }
    for state in ("succeeded", "cancelled"):
        finished_job(fresh_dsn, state, days)
    for state in ("dead", "expired"):
        finished_job(fresh_dsn, state, weeks)

    deleted = prune(fresh_dsn)

    assert deleted == Counter(succeeded=1, cancelled=1, dead=1, expired=1)
    assert job_ids(fresh_dsn) == kept


def test_none_keeps_a_state_forever(fresh_dsn: str) -> None:
    old = timedelta(days=400)
    dead = finished_job(fresh_dsn, "dead", old)
    expired = finished_job(fresh_dsn, "expired", old)
    finished_job(fresh_dsn, "succeeded", old)

    deleted = prune(fresh_dsn, Retention(dead=None))

    assert deleted == Counter(succeeded=1)
    assert job_ids(fresh_dsn) == {dead, expired}


def test_a_backlog_is_deleted_in_bounded_statements(fresh_dsn: str) -> None:
    query(fresh_dsn, "INSERT INTO pgjobs.jobs (task, state, finished_at) "
                     "SELECT 't', 'succeeded', now() - interval '2 days' "
                     "FROM generate_series(1, 25)")
    pruner_runs = [prune(fresh_dsn, limit=10) for _ in range(4)]
    assert [run["succeeded"] for run in pruner_runs] == [10, 10, 5, 0]
    assert job_ids(fresh_dsn) == set()


def test_a_pruner_that_hits_its_limit_runs_again_soon(fresh_dsn: str) -> None:
    for _ in range(3):
        finished_job(fresh_dsn, "succeeded", timedelta(days=2))
    pruner = Pruner(pgjobs.App(dsn=fresh_dsn).queries, Retention(), interval=600, limit=2)

    async def twice() -> list[float]:
        async with await psycopg.AsyncConnection.connect(fresh_dsn, autocommit=True) as conn:
            waits = []
            for _ in range(2):
                await pruner.run_once(conn)
                waits.append(pruner.next_run - time.monotonic())
            return waits

    full, partial = asyncio.run(twice())
    assert full <= 1.0 < 590 <= partial


def test_one_worker_prunes_at_a_time(fresh_dsn: str) -> None:
    old = finished_job(fresh_dsn, "succeeded", timedelta(days=2))
    with psycopg.connect(fresh_dsn) as other:  # another worker, inside its prune statement
        other.execute("SELECT pg_advisory_xact_lock(%s)", (prune_lock("pgjobs"),))
        assert prune(fresh_dsn) == Counter()
        assert job_ids(fresh_dsn) == {old}
    assert prune(fresh_dsn) == Counter(succeeded=1)


def test_the_lock_is_per_schema() -> None:
    assert prune_lock("pgjobs") != prune_lock("other")


def test_a_job_being_changed_is_left_for_the_next_run(fresh_dsn: str) -> None:
    dead = finished_job(fresh_dsn, "dead", timedelta(days=8))
    with psycopg.connect(fresh_dsn) as operator:  # an operator retrying it right now
        operator.execute("UPDATE pgjobs.jobs SET state = 'available', finished_at = NULL "
                         "WHERE id = %s", (dead,))
        assert prune(fresh_dsn) == Counter()
    assert job_ids(fresh_dsn) == {dead}
    assert scalar(fresh_dsn, "SELECT state FROM pgjobs.jobs WHERE id = %s", dead) == "available"


# -- batches ---------------------------------------------------------------------------


NewBatch = Callable[..., tuple[pgjobs.Batch, list[int]]]


@pytest.fixture
def new_batch(fresh_app: pgjobs.App) -> NewBatch:
    """Commits a batch of ``jobs`` waiting jobs (under ``parent``, if given)."""
    member = register(fresh_app, "member")

    def create(jobs: int, parent: pgjobs.Batch | None = None) -> tuple[pgjobs.Batch, list[int]]:
        with psycopg.connect(fresh_app.dsn) as conn:
            batch = fresh_app.batch(conn, parent=parent)
            rows = batch.enqueue_many(member, [{"n": n} for n in range(jobs)]) if jobs else []
        return batch, [r.id for r in rows]

    return create


def finish(dsn: str, ids: list[int], state: str = "succeeded",
           age: timedelta = timedelta(0)) -> None:
    """Ends jobs the way a worker does, ``age`` ago: the batch triggers count them, and the
    worker then folds their batches' counters (firing the events that are due)."""
    query(dsn, "UPDATE pgjobs.jobs SET state = %s, finished_at = now() - %s "
               "WHERE id = ANY(%s)", state, age, ids)
    query(dsn, "SELECT pgjobs.batch_fold(ARRAY(SELECT batch_id FROM pgjobs.jobs "
               "WHERE id = ANY(%s) AND batch_id IS NOT NULL))", ids)


def batch_row(dsn: str, batch_id: int) -> tuple[Any, ...] | None:
    rows = query(dsn, "SELECT state, total, pending, succeeded, dead FROM pgjobs.batches "
                      "WHERE id = %s", batch_id)
    return rows[0] if rows else None


def test_an_unfinished_batch_keeps_its_finished_jobs(new_batch: NewBatch,
                                                     fresh_dsn: str) -> None:
    batch, ids = new_batch(3)
    finish(fresh_dsn, ids[:2], age=timedelta(days=3))

    assert prune(fresh_dsn) == Counter()  # one job of the batch still waits
    assert job_ids(fresh_dsn) == set(ids)
    assert batch_row(fresh_dsn, batch.id) == ("pending", 3, 1, 2, 0)

    finish(fresh_dsn, ids[2:], age=timedelta(days=3))  # the batch completes (and succeeds) now
    assert batch_row(fresh_dsn, batch.id) == ("succeeded", 3, 0, 3, 0)
    assert prune(fresh_dsn) == Counter()  # kept a day after the batch completed

    query(fresh_dsn, "UPDATE pgjobs.batches SET completed_at = completed_at - interval "
                     "'2 days' WHERE id = %s", batch.id)
    assert prune(fresh_dsn) == Counter(succeeded=3)
    # The counters live in the batch row: deleting its jobs changed none of them.
    assert batch_row(fresh_dsn, batch.id) == ("succeeded", 3, 0, 3, 0)

    # The emptied batch row goes once the longest job retention (a week) has passed.
    query(fresh_dsn, "UPDATE pgjobs.batches SET completed_at = completed_at - interval "
                     "'6 days' WHERE id = %s", batch.id)
    assert prune(fresh_dsn) == Counter(batches=1)
    assert batch_row(fresh_dsn, batch.id) is None


def test_a_dead_job_of_a_running_batch_can_still_be_retried(
    new_batch: NewBatch, fresh_app: pgjobs.App, fresh_dsn: str
) -> None:
    batch, ids = new_batch(2)
    finish(fresh_dsn, ids[:1], state="dead", age=timedelta(days=30))
    assert prune(fresh_dsn) == Counter()
    finish(fresh_dsn, ids[:1], state="available")  # the operator's retry, counted back
    assert batch_row(fresh_dsn, batch.id) == ("pending", 2, 2, 0, 0)
    query(fresh_dsn, "UPDATE pgjobs.jobs SET finished_at = NULL WHERE id = %s", ids[0])
    drain(fresh_app)
    assert batch_row(fresh_dsn, batch.id) == ("succeeded", 2, 0, 2, 0)


def test_a_batch_with_a_child_batch_or_a_waiting_job_is_kept(
    new_batch: NewBatch, fresh_dsn: str
) -> None:
    parent, waiting = new_batch(1)
    child, _ = new_batch(0, parent=parent)
    query(fresh_dsn, "UPDATE pgjobs.batches SET completed_at = now() - interval '30 days'")
    deleted = prune(fresh_dsn)
    assert deleted["batches"] == 1  # the empty child only
    assert batch_row(fresh_dsn, child.id) is None
    assert batch_row(fresh_dsn, parent.id) is not None
    assert job_ids(fresh_dsn) == set(waiting)


# -- unique holds, periodic rows ---------------------------------------------------------


def test_a_pruned_unique_job_frees_its_key(fresh_app: pgjobs.App, fresh_dsn: str) -> None:
    once = register(fresh_app, "once", unique_for=timedelta(hours=1))
    first = once.enqueue()
    # A hold that outlived its job's end (written by hand, or by an older version):
    # deleting the job releases it through jobs_unique_release_delete.
    query(fresh_dsn, "UPDATE pgjobs.jobs SET state = 'succeeded', finished_at = now() - "
                     "interval '2 days' WHERE id = %s", first.id)
    query(fresh_dsn, "INSERT INTO pgjobs.unique_keys (key, job_id) "
                     "SELECT unique_key, id FROM pgjobs.jobs WHERE id = %s", first.id)
    assert prune(fresh_dsn) == Counter(succeeded=1)
    assert scalar(fresh_dsn, "SELECT count(*) FROM pgjobs.unique_keys") == 0
    again = once.enqueue()
    assert not again.duplicate and again.id != first.id


def test_a_periodic_rows_last_job_may_be_pruned(fresh_dsn: str) -> None:
    job = finished_job(fresh_dsn, "succeeded", timedelta(days=2))
    query(fresh_dsn, "INSERT INTO pgjobs.periodic (name, schedule, task, queue, last_job_id) "
                     "VALUES ('nightly', '0 3 * * *', 't', 'default', %s)", job)
    assert prune(fresh_dsn) == Counter(succeeded=1)
    assert scalar(fresh_dsn, "SELECT last_job_id FROM pgjobs.periodic") == job


# -- workers -----------------------------------------------------------------------------


def worker_row(dsn: str, state: str, beat: timedelta) -> int:
    return int(scalar(
        dsn,
        "INSERT INTO pgjobs.workers (host, pid, queues, concurrency, state, heartbeat_at) "
        "VALUES ('h', 1, '{default}', 1, %s, now() - %s) RETURNING id", state, beat))


def test_rows_of_stopped_and_vanished_workers_go_after_their_period(fresh_dsn: str) -> None:
    worker_row(fresh_dsn, "stopped", timedelta(days=2))
    worker_row(fresh_dsn, "running", timedelta(days=2))  # died without saying so
    live = worker_row(fresh_dsn, "running", timedelta(seconds=1))
    recent = worker_row(fresh_dsn, "stopped", timedelta(hours=1))
    assert prune(fresh_dsn) == Counter(workers=2)
    assert {r[0] for r in query(fresh_dsn, "SELECT id FROM pgjobs.workers")} == {live, recent}
    worker_row(fresh_dsn, "stopped", timedelta(days=400))
    assert prune(fresh_dsn, Retention(workers=None)) == Counter()


# -- the worker runs it ----------------------------------------------------------------------


def test_a_worker_prunes_with_its_configured_retention(fresh_app: pgjobs.App,
                                                       fresh_dsn: str) -> None:
    old = finished_job(fresh_dsn, "succeeded", timedelta(hours=2))
    young = finished_job(fresh_dsn, "succeeded", timedelta(minutes=30))
    drain(fresh_app, retention_succeeded=3600.0)
    assert job_ids(fresh_dsn) == {young}
    assert old not in job_ids(fresh_dsn)


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), timedelta(0), "7d", True])
@pytest.mark.parametrize("name", ["retention_dead", "retention_workers"])
def test_a_retention_must_be_positive_or_none(name: str, value: Any) -> None:
    with pytest.raises(pgjobs.PgJobsError, match="positive number of seconds"):
        WorkerConfig(**{name: value})


def test_a_retention_may_be_a_timedelta() -> None:
    config = WorkerConfig(retention_succeeded=timedelta(hours=2), retention_cancelled=None)
    assert config.retention == Retention(succeeded=7200.0, cancelled=None)


def test_worker_rows_are_kept_at_least_three_leases() -> None:
    with pytest.raises(pgjobs.PgJobsError, match="at least three leases"):
        WorkerConfig(lease=60, retention_workers=120)


@pytest.mark.parametrize("value", ["2w", "-5m", "soon", "d"])
def test_the_cli_rejects_a_duration_it_cannot_read(value: str) -> None:
    result = run("worker", "--app", "x:y", "--retention-dead", value)
    assert result.exit_code == 2
    assert "is not a duration" in result.output and "7d" in result.output


def test_the_cli_reads_durations() -> None:
    from pgjobs.ops.settings import Duration

    read = Duration().convert
    assert [read(v, None, None) for v in ("90", "90s", "15m", "12h", "7d", "1.5d")] == [
        90.0, 90.0, 900.0, 43_200.0, 604_800.0, 129_600.0]
    assert read("never", None, None) is None and read("0", None, None) is None


def test_a_batch_goes_after_the_longest_finite_retention(
    new_batch: NewBatch, fresh_dsn: str
) -> None:
    kept, dead = new_batch(1)
    emptied, _ = new_batch(0)
    finish(fresh_dsn, dead, state="dead", age=timedelta(days=30))
    query(fresh_dsn, "UPDATE pgjobs.batches SET completed_at = now() - interval '10 days'")
    forever = Retention(dead=None)
    assert prune(fresh_dsn, forever) == Counter(batches=1)  # after a day, the longest
    assert batch_row(fresh_dsn, emptied.id) is None
    assert batch_row(fresh_dsn, kept.id) is not None and job_ids(fresh_dsn) == set(dead)


def test_workers_pruning_at_once_delete_each_job_once(fresh_dsn: str) -> None:
    query(fresh_dsn, "INSERT INTO pgjobs.jobs (task, state, finished_at) "
                     "SELECT 't', 'succeeded', now() - interval '2 days' "
                     "FROM generate_series(1, 300)")
    queries = pgjobs.App(dsn=fresh_dsn).queries

    async def race() -> list[Counter[str]]:
        conns = [await psycopg.AsyncConnection.connect(fresh_dsn, autocommit=True)
                 for _ in range(4)]
        try:
            return list(await asyncio.gather(
                *(Pruner(queries, Retention(), limit=50).run_once(c) for c in conns)))
        finally:
            for conn in conns:
                await conn.close()

    deleted = 0
    for _ in range(12):  # at least 50 per round while jobs are left: 6 rounds suffice
        rounds = asyncio.run(race())
        assert all(n in (0, 50) for run in rounds for n in run.values()), rounds
        deleted += sum(run["succeeded"] for run in rounds)
    assert deleted == 300 and job_ids(fresh_dsn) == set()
