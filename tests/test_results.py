"""Results: ``App.result`` reads a job's outcome; ``Enqueued.wait`` / ``wait_async`` return
once a real worker process ends the job, woken by the done notification (revision 0009),
with polling as the fallback; a timeout and a missing job raise typed errors."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import pickle
import threading
from collections.abc import Iterator

import psycopg
import pytest

import pgjobs
from pgjobs.client import results
from tests.helpers import harness_database, scalar, wait_until
from tests.workerapps import basic
from tests.workerapps.basic import HARNESS, app
from tests.workerprocs import Spawner, spawner

pytestmark = pytest.mark.xdist_group("worker")


@pytest.fixture
def dsn(fresh_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    yield from harness_database(fresh_dsn, monkeypatch, HARNESS, app)


@pytest.fixture
def spawn(dsn: str) -> Iterator[Spawner]:
    with spawner(dsn) as start:
        yield start


def test_wait_returns_the_value_a_worker_process_computed(
    dsn: str, spawn: Spawner
) -> None:
    enqueued = basic.double.enqueue(x=21)
    spawn("--queues", "default")
    done = enqueued.wait(timeout=60)
    assert (done.id, done.state, done.result, done.succeeded) == (enqueued.id, "succeeded", 42,
                                                                    True)
    assert done.finished and done.attempt == 1 and done.errors == []
    assert done.finished_at is not None and done.started_at is not None
    # the same, read again from another App (another producer process would do this)
    other = pgjobs.App(dsn=dsn)
    try:
        again = other.result(None, enqueued.id)
        assert again == done
        with psycopg.connect(dsn) as conn:
            assert other.result(conn, enqueued.id) == done
    finally:
        other.close()


def test_wait_async_returns_a_dead_jobs_errors(
    dsn: str, spawn: Spawner
) -> None:
    enqueued = basic.fail.options(max_attempts=1).enqueue(message="no luck")
    spawn("--queues", "default")
    done = asyncio.run(enqueued.wait_async(timeout=60))
    assert done.state == "dead" and not done.succeeded and done.result is None
    assert done.last_error is not None and done.last_error["message"] == "no luck"
    app_result = asyncio.run(app.wait_async(enqueued.id, 0))
    assert app_result == done


def test_wait_times_out_with_a_typed_error_when_no_worker_runs(dsn: str) -> None:
    enqueued = basic.noop.enqueue()
    with pytest.raises(pgjobs.ResultTimeout) as caught:
        enqueued.wait(timeout=0.2)
    assert caught.value.job_id == enqueued.id and caught.value.state == "available"
    assert isinstance(caught.value, TimeoutError)
    with pytest.raises(pgjobs.ResultTimeout):
        asyncio.run(enqueued.wait_async(timeout=0.2))
    assert app.result(None, enqueued.id).state == "available"  # type: ignore[union-attr]


def test_missing_jobs_and_bad_input_are_refused(dsn: str) -> None:
    assert app.result(None, 10**12) is None
    with pytest.raises(pgjobs.JobNotFound):
        app.wait(10**12, timeout=5)
    with pytest.raises(pgjobs.InvalidOption):
        app.wait(0)
    with pytest.raises(pgjobs.InvalidOption):
        app.wait(1, timeout=-1)
    with pytest.raises(pgjobs.InvalidOption):
        app.result(None, "1")  # type: ignore[arg-type]
    with pytest.raises(pgjobs.ConfigurationError):
        pgjobs.Enqueued(5).wait(1)


def test_an_enqueued_pickles_and_copies_without_its_app(dsn: str) -> None:
    enqueued = basic.noop.enqueue()
    assert enqueued.source is app
    again = pickle.loads(pickle.dumps(enqueued))
    assert again == enqueued and again.source is None
    assert dataclasses.asdict(enqueued)["id"] == enqueued.id
    assert copy.deepcopy(enqueued).source is app


def waiting(dsn: str) -> bool:
    """A waiter has read the job and sits waiting for notifications."""
    return bool(scalar(dsn, "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                            "%s AND state = 'idle' AND ltrim(query, E' \\n') LIKE 'SELECT%%'",
                       results.APPLICATION_NAME))


def test_the_end_of_a_job_wakes_the_waiter_by_notification(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With polling out of the picture, only the trigger's notification can end the wait.
    monkeypatch.setattr(results, "POLL", 3600.0)
    enqueued = basic.noop.enqueue()
    other = basic.noop.enqueue()
    outcome: list[object] = []
    waiter = threading.Thread(target=lambda: outcome.append(enqueued.wait(timeout=120)))
    waiter.start()
    wait_until(lambda: waiting(dsn), what="the waiter to listen")
    app.cancel_jobs(None, [other.id])  # another job's end: read again, keep waiting
    app.cancel_jobs(None, [enqueued.id], reason="by hand")
    waiter.join(120)
    assert not waiter.is_alive()
    assert [r.state for r in outcome] == ["cancelled"]  # type: ignore[attr-defined]


def test_sql_by_hand_notifies_the_done_channel_for_a_watched_job_only(dsn: str) -> None:
    """A job a waiter marked (job_watch) notifies when it ends, whoever ends it; a job no
    one waits for notifies nobody (a notifying commit takes a cluster-wide lock, which
    the workers' flushes must not pay for every job)."""
    watched, unwatched = basic.noop.enqueue().id, basic.noop.enqueue().id
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(f'LISTEN "{app.config.done_channel}"')
        assert scalar(dsn, "SELECT pgjobs.job_watch(%s)", watched) is True
        assert scalar(dsn, "SELECT pgjobs.job_watch(%s)", watched) is True  # again: no-op
        with psycopg.connect(dsn) as conn:
            conn.execute("UPDATE pgjobs.jobs SET state = 'expired', finished_at = now() "
                         "WHERE id = ANY(%s)", ([watched, unwatched],))
        notes = list(listener.notifies(timeout=3, stop_after=2))
    assert [(n.channel, n.payload) for n in notes] == [(app.config.done_channel, str(watched))]
    # an ended job, or none, cannot be watched: the waiter's read sees it has ended
    assert scalar(dsn, "SELECT pgjobs.job_watch(%s)", watched) is False
    assert scalar(dsn, "SELECT pgjobs.job_watch(%s)", 10**12) is False


def test_without_a_listen_connection_the_wait_polls(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(results, "POLL", 0.05)
    polling = pgjobs.App(dsn=dsn, pgbouncer=True)  # no listen DSN: poll only
    try:
        assert polling.listen_dsn is None
        job_id = polling.task("noop").enqueue().id
        outcome: list[pgjobs.JobResult] = []
        waiter = threading.Thread(target=lambda: outcome.append(polling.wait(job_id, 120)))
        waiter.start()
        polling.cancel_jobs(None, [job_id])
        waiter.join(120)
        assert [r.state for r in outcome] == ["cancelled"]

        async def wait_async() -> pgjobs.JobResult:
            try:
                return await polling.wait_async(job_id, 5)
            finally:
                await polling.aclose()

        assert asyncio.run(wait_async()).state == "cancelled"
    finally:
        polling.close()
