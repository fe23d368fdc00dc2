"""The worker against a real PostgreSQL: outcomes in-process with drain(), and crashes,
signals and leases with real `pgjobs worker` subprocesses."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import psycopg
import pytest

import pgjobs
from pgjobs.core import outcomes
from pgjobs.core.types import ClaimedJob
from pgjobs.db import leases
from pgjobs.ops import migrate as _migrate
from pgjobs.testing import assert_enqueued, drain
from pgjobs.worker.context import JobContext
from pgjobs.worker.summary import Summary
from tests.helpers import (
    TESTS,
    WorkerProcess,
    harness_database,
    job_state,
    query,
    scalar,
    wait_until,
)
from tests.workerapps import basic
from tests.workerapps.basic import HARNESS, app

pytestmark = pytest.mark.xdist_group("worker")


@pytest.fixture
def dsn(fresh_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh database with the harness tables; the test app points at it."""
    yield from harness_database(fresh_dsn, monkeypatch, HARNESS, app)


@pytest.fixture
def spawn(dsn: str) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(*args: str, **kwargs: object) -> WorkerProcess:
        worker = WorkerProcess(dsn, *args, **kwargs)  # type: ignore[arg-type]
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()
        print(f"--- worker {worker.pid} log ---\n{worker.log()}")
        worker.close()


def enqueue(dsn: str, task: pgjobs.Task, **kwargs: object) -> int:  # type: ignore[type-arg]
    with psycopg.connect(dsn) as conn:
        return task.enqueue(conn, **kwargs).id


def job(dsn: str, job_id: int) -> dict[str, object]:
    with psycopg.connect(dsn, row_factory=psycopg.rows.dict_row) as c:
        row = c.execute("SELECT * FROM pgjobs.jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return row


# -- outcomes (in-process) ---------------------------------------------------------------


def test_drain_runs_sync_and_async_handlers_and_stores_results(dsn: str) -> None:
    a = enqueue(dsn, basic.double, x=21)
    b = enqueue(dsn, basic.async_echo, value="hi")
    stats = drain(app)
    assert stats["succeeded"] == 2
    assert job(dsn, a)["result"] == 42 and job(dsn, a)["state"] == "succeeded"
    assert job(dsn, b)["result"] == {"echo": "hi"}
    assert job(dsn, a)["attempt"] == 1 and job(dsn, a)["finished_at"] is not None
    assert job(dsn, a)["lease_token"] is None


def test_failures_retry_then_die_with_every_error_recorded(dsn: str) -> None:
    job_id = enqueue(dsn, basic.fail, message="kaput")
    stats = drain(app)
    assert stats == {"retry": 2, "dead": 1}
    row = job(dsn, job_id)
    assert row["state"] == "dead" and row["attempt"] == 3
    errors = row["errors"]
    assert isinstance(errors, list) and [e["attempt"] for e in errors] == [1, 2, 3]
    for entry in errors:
        assert entry["type"] == "ValueError" and entry["message"] == "kaput"
        assert "Traceback" in entry["traceback"] and "kaput" in entry["traceback"]
        assert entry["at"]


def test_retries_log_at_info_deaths_at_warning_and_successes_at_debug(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    failing = enqueue(dsn, basic.fail, message="kaput")
    fine = enqueue(dsn, basic.double, x=1)
    with caplog.at_level(logging.DEBUG, logger="pgjobs.worker"):
        drain(app)
    levels = {(r.levelname, r.getMessage().split(" task=")[0]) for r in caplog.records
              if r.getMessage().startswith("job id=")}
    assert levels == {("INFO", f"job id={failing}"), ("WARNING", f"job id={failing}"),
                      ("DEBUG", f"job id={fine}")}


def test_the_summary_counts_outcomes_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    summary = Summary(10.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="pgjobs.worker"):
        for second in range(25):
            now[0] = 100.0 + second
            summary.count("retry" if second == 3 else "succeeded", held=2)
        summary.flush(now[0], 0)
        summary.flush(now[0], 0)  # nothing since: no line
    assert [r.getMessage() for r in caplog.records] == [
        "11 job(s) in 10 s (1.1/s): retry=1 succeeded=10; running or held 2",
        "10 job(s) in 10 s (1.0/s): succeeded=10; running or held 2",
        "4 job(s) in 4 s (1.0/s): succeeded=4; running or held 0",
    ]


def test_a_retry_that_succeeds_keeps_its_earlier_errors(dsn: str) -> None:
    job_id = enqueue(dsn, basic.flaky, fail_times=2)
    drain(app)
    row = job(dsn, job_id)
    assert row["state"] == "succeeded" and row["result"] == 3 and row["attempt"] == 3
    assert [e["message"] for e in row["errors"]] == [  # type: ignore[attr-defined]
        "flaky failure 1", "flaky failure 2"]


def test_default_backoff_grows_and_jitters() -> None:
    waits = [outcomes.default_backoff(n) for n in range(1, 8)]
    assert waits == sorted(waits)
    assert 15 <= waits[0] <= 26
    assert len({outcomes.default_backoff(3) for _ in range(20)}) > 1


def test_retry_counts_the_attempt_and_schedules_from_the_database_clock(dsn: str) -> None:
    job_id = enqueue(dsn, basic.retry_later, seconds=600)
    assert drain(app) == {"retry": 1}
    row = job(dsn, job_id)
    assert row["state"] == "available" and row["attempt"] == 1
    delay = scalar(dsn, "SELECT run_at - (errors->-1->>'at')::timestamptz FROM pgjobs.jobs "
                        "WHERE id = %s", job_id)
    assert timedelta(seconds=599) < delay < timedelta(seconds=601)
    assert row["errors"][-1]["type"] == "pgjobs.Retry"  # type: ignore[index]


def test_snooze_does_not_count_an_attempt(dsn: str) -> None:
    job_id = enqueue(dsn, basic.snooze_once, seconds=0)
    stats = drain(app)
    assert stats == {"snoozed": 1, "succeeded": 1}
    row = job(dsn, job_id)
    assert row["state"] == "succeeded" and row["attempt"] == 1 and row["errors"] == []
    later = enqueue(dsn, basic.snooze_once, seconds=3600)
    drain(app)
    row = job(dsn, later)
    assert row["state"] == "available" and row["attempt"] == 0
    assert scalar(dsn, "SELECT run_at > now() + interval '59 minutes' FROM pgjobs.jobs "
                       "WHERE id = %s", later)


def test_cancel_ends_the_job_with_its_reason(dsn: str) -> None:
    job_id = enqueue(dsn, basic.cancel_me, reason="customer left")
    assert drain(app) == {"cancelled": 1}
    row = job(dsn, job_id)
    assert row["state"] == "cancelled" and row["meta"] == {"cancel_reason": "customer left"}
    assert row["finished_at"] is not None


def test_unknown_task_goes_back_unspent_and_other_jobs_still_run(
    dsn: str, caplog: pytest.LogCaptureFixture,
) -> None:
    # The worker's own App refuses the name; a producer that opted out stores it.
    producer = pgjobs.App(dsn=dsn, strict_names=False)
    with psycopg.connect(dsn) as conn:
        ghost = producer.enqueue(conn, "os.system", command="rm -rf /").id
        typo = producer.enqueue(conn, "doubel", x=2).id
        ok = basic.double.enqueue(conn, x=1).id
    with caplog.at_level(logging.WARNING, logger="pgjobs.worker"):
        stats = drain(app)
    assert stats["succeeded"] == 1 and stats["unknown_task"] == 2
    # Handed back for a worker that has the task (a mixed deploy), within the grace:
    # no attempt spent, no error recorded, due again a few seconds later.
    for job_id in (ghost, typo):
        row = job(dsn, job_id)
        assert (row["state"], row["attempt"], row["errors"]) == ("available", 0, [])
        assert scalar(dsn, "SELECT run_at > now() + interval '3 seconds' FROM pgjobs.jobs "
                           "WHERE id = %s", job_id)
    assert job_state(dsn, ok) == "succeeded"
    # Said at WARNING, with the job and the task.
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"job {ghost} " in m and "'os.system'" in m for m in warned), warned
    assert any(f"job {typo} " in m and "did you mean 'double'?" in m for m in warned), warned


def test_unknown_task_dies_once_no_worker_has_known_it_for_the_grace(dsn: str) -> None:
    producer = pgjobs.App(dsn=dsn, strict_names=False)
    with psycopg.connect(dsn) as conn:
        never = producer.enqueue(conn, "never.deployed").id
        gone = producer.enqueue(conn, "gone.away").id
        # a task some worker knew, but an hour ago: the registry says when
        conn.execute("INSERT INTO pgjobs.tasks (name, queue, last_seen_at) "
                     "VALUES ('gone.away', 'default', now() - interval '1 hour')")
        conn.execute("UPDATE pgjobs.jobs SET created_at = now() - interval '2 hours'")
    assert drain(app, unknown_task_grace=1800) == {"unknown_task": 2}
    for job_id in (never, gone):
        row = job(dsn, job_id)
        assert (row["state"], row["attempt"]) == ("dead", 0)
        error = row["errors"][-1]  # type: ignore[index]
        assert error["type"] == "pgjobs.UnknownTask" and error["attempt"] == 1
        assert "deploy a worker whose app registers" in error["message"]
        assert "grace of 00:30:00" in error["message"]
    assert "'never.deployed': no worker has ever registered it" in \
        job(dsn, never)["errors"][-1]["message"]  # type: ignore[index]
    assert "'gone.away': a worker last knew it at" in \
        job(dsn, gone)["errors"][-1]["message"]  # type: ignore[index]


def test_timeouts_cancel_async_handlers_and_ask_sync_ones_to_stop(dsn: str) -> None:
    a = enqueue(dsn, basic.slow_async)
    s = enqueue(dsn, basic.slow_sync)
    assert drain(app) == {"dead": 2}
    for job_id in (a, s):
        error = job(dsn, job_id)["errors"][0]  # type: ignore[index]
        assert error["type"] == "pgjobs.JobTimeout"


def test_transactional_completion_writes_the_effect_once(dsn: str) -> None:
    ids = [enqueue(dsn, basic.effect) for _ in range(5)]
    assert drain(app) == {"succeeded": 5}
    assert scalar(dsn, "SELECT count(*) FROM effects") == 5
    assert all(job_state(dsn, i) == "succeeded" for i in ids)


def test_concurrency_is_respected(dsn: str) -> None:
    for _ in range(8):
        enqueue(dsn, basic.busy, seconds=0.3)
    drain(app, concurrency=3)
    spans = query(dsn, "SELECT started_at, finished_at FROM attempts")
    assert len(spans) == 8
    most = max(sum(1 for s, f in spans if s <= t < f) for t, _ in spans)
    assert most <= 3


def test_drain_leaves_future_jobs_and_other_queues(dsn: str) -> None:
    later = basic.double.options(run_in=timedelta(hours=1))
    elsewhere = basic.double.options(queue="elsewhere")
    with psycopg.connect(dsn) as conn:
        a = later.enqueue(conn, x=1).id
        b = elsewhere.enqueue(conn, x=1).id
        assert_enqueued(conn, basic.double, x=1)
    assert drain(app, queues=("default",)) == {}
    assert job_state(dsn, a) == "available" and job_state(dsn, b) == "available"
    assert drain(app, queues=("elsewhere",)) == {"succeeded": 1}


def test_expired_jobs_are_never_run_and_end_expired(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        job_id = basic.double.options(expires_in=timedelta(seconds=1)).enqueue(conn, x=1).id
        conn.execute("UPDATE pgjobs.jobs SET run_at = now() - interval '1 hour', "
                     "expires_at = now() - interval '1 minute' WHERE id = %s", (job_id,))
    assert drain(app) == {}
    row = job(dsn, job_id)
    assert row["state"] == "expired" and row["attempt"] == 0 and row["finished_at"]


# -- fencing -----------------------------------------------------------------------------


def claim(dsn: str, lease: float = 30.0, limit: int = 10) -> list[ClaimedJob]:
    with psycopg.connect(dsn, autocommit=True) as c:
        rows = c.execute(app.queries.job_claim, {
            "queues": ["default"], "limit": limit, "lease": timedelta(seconds=lease),
            "worker_id": None}).fetchall()
    return [ClaimedJob(*row) for row in rows]


def expire_and_reclaim(dsn: str, job_id: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("UPDATE pgjobs.jobs SET lease_expires_at = now() - interval '1 s' "
                  "WHERE id = %s", (job_id,))
        c.execute(app.queries.job_reclaim,
                  {"limit": 100, "budget": 3, "channel": app.config.channel})


def complete_many(dsn: str, ctx: JobContext, outcome: outcomes.Outcome) -> set[int]:
    row = leases.outcome_row(outcome)
    assert row is not None
    params = leases.outcomes_param([(ctx.id, ctx.job.lease_token, row)])
    with psycopg.connect(dsn, autocommit=True) as c:
        written = c.execute(app.queries.job_complete_many, params).fetchall()
    return {r[0] for r in written}


def complete_succeeded(dsn: str, ctx: JobContext) -> set[int]:
    query = leases.complete_succeeded(app.queries, [(ctx.id, ctx.job.lease_token)])
    with psycopg.connect(dsn, autocommit=True) as c:
        return {r[0] for r in c.execute(query.text, query.params).fetchall()}


def test_a_stale_attempt_cannot_complete_fail_or_heartbeat(dsn: str) -> None:
    job_id = enqueue(dsn, basic.double, x=1)
    (first,) = claim(dsn)
    expire_and_reclaim(dsn, job_id)
    (second,) = claim(dsn)
    assert second.id == job_id and second.lease_token != first.lease_token
    assert second.attempt == 1  # the lost attempt was refunded
    stale = JobContext(first, app.queries)
    assert complete_many(dsn, stale, outcomes.Outcome("succeeded", result="1")) == set()
    assert complete_many(dsn, stale, outcomes.Outcome("dead", error={"m": 1})) == set()
    assert complete_succeeded(dsn, stale) == set()
    with psycopg.connect(dsn) as conn, pytest.raises(pgjobs.LeaseLost):
        stale.complete(conn)
    assert stale.lease_lost
    with psycopg.connect(dsn, autocommit=True) as c:
        renewed = c.execute(app.queries.job_heartbeat, {
            "ids": [job_id], "tokens": [first.lease_token],
            "lease": timedelta(seconds=60), "worker_id": None, "progress": [None],
            "checkpoints": [None]}).fetchall()
    assert renewed == []
    row = job(dsn, job_id)
    assert row["state"] == "running" and str(row["lease_token"]) == second.lease_token
    fresh = JobContext(second, app.queries)
    assert complete_many(dsn, fresh, outcomes.Outcome("succeeded", result="2")) == {job_id}
    row = job(dsn, job_id)
    assert row["state"] == "succeeded" and row["result"] == 2 and row["recoveries"] == 1
    assert complete_succeeded(dsn, fresh) == set()  # finished: no lease to match
    # A terminal state is absorbing: the stale attempt cannot flip it either.
    assert complete_many(dsn, stale, outcomes.Outcome("retry", error={"m": 1})) == set()
    assert job_state(dsn, job_id) == "succeeded"


def test_complete_in_a_rolled_back_transaction_leaves_the_job_running(dsn: str) -> None:
    job_id = enqueue(dsn, basic.double, x=1)
    (claimed,) = claim(dsn)
    ctx = JobContext(claimed, app.queries)
    with psycopg.connect(dsn) as conn:
        ctx.complete(conn)
        conn.rollback()
    assert job_state(dsn, job_id) == "running"
    with psycopg.connect(dsn) as conn:
        ctx.complete(conn, result={"ok": True})
    assert job(dsn, job_id)["result"] == {"ok": True}


def test_reclaim_races_a_completion_and_the_completion_stays(dsn: str) -> None:
    job_id = enqueue(dsn, basic.double, x=1)
    (claimed,) = claim(dsn)
    ctx = JobContext(claimed, app.queries)
    query(dsn, "UPDATE pgjobs.jobs SET lease_expires_at = now() - interval '1 s' WHERE id = %s",
          job_id)  # the lease lapsed, but no reclaim has run yet
    reclaim = {"limit": 100, "budget": 3, "channel": app.config.channel}
    with psycopg.connect(dsn) as conn:
        ctx.complete(conn)  # still fenced in: the token matches; the row is now locked
        # A reclaim during the completion skips the locked row ...
        with psycopg.connect(dsn, autocommit=True) as other:
            assert other.execute(app.queries.job_reclaim, reclaim).fetchall() == []
    # ... and after the commit the row no longer qualifies.
    with psycopg.connect(dsn, autocommit=True) as other:
        assert other.execute(app.queries.job_reclaim, reclaim).fetchall() == []
    row = job(dsn, job_id)
    assert row["state"] == "succeeded" and row["recoveries"] == 0


def test_recovery_budget_makes_a_repeatedly_lost_job_dead(dsn: str) -> None:
    job_id = enqueue(dsn, basic.double, x=1)
    for expected in ("available", "available", "available", "dead"):
        claim(dsn)
        expire_and_reclaim(dsn, job_id)
        assert job_state(dsn, job_id) == expected
    row = job(dsn, job_id)
    assert row["recoveries"] == 4 and row["attempt"] == 0
    assert "recovery budget of 3 exhausted" in row["errors"][-1]["message"]  # type: ignore[index]
    assert row["errors"][-1]["type"] == "pgjobs.WorkerLost"  # type: ignore[index]


def test_heartbeats_keep_a_job_longer_than_its_lease(dsn: str) -> None:
    job_id = enqueue(dsn, basic.busy, seconds=3.5)
    assert drain(app, lease=1.0) == {"succeeded": 1}
    row = job(dsn, job_id)
    assert row["recoveries"] == 0 and row["attempt"] == 1 and row["result"] == "done"
    assert scalar(dsn, "SELECT count(*) FROM attempts") == 1


def two_jobs_stopped_by(dsn: str, take_away: Callable[[int, int], None]) -> tuple[int, int]:
    """A sync and an async job start on an in-process worker (lease 1.5 s); then
    ``take_away(sync_id, async_id)`` runs while they do, and the worker drains. Both
    handlers must be stopped (the sync one is told, and notes it; the async one is
    cancelled) and nothing written for their attempts."""
    sync_id = enqueue(dsn, basic.watch_lease, seconds=20)
    async_id = enqueue(dsn, basic.async_busy, seconds=20)

    async def scenario() -> object:
        worker = pgjobs.Worker(app, pgjobs.WorkerConfig(lease=1.5, listen=False, burst=True))
        run = asyncio.create_task(worker.run())
        await asyncio.to_thread(wait_until, lambda: scalar(
            dsn, "SELECT count(*) FROM attempts") == 2, 20, "both jobs to start")
        await asyncio.to_thread(take_away, sync_id, async_id)
        return await run

    assert asyncio.run(scenario()) == {"lease_lost": 2}  # outcomes written nowhere
    notes = [r[0] for r in query(dsn, "SELECT note FROM attempts WHERE note IS NOT NULL")]
    assert notes == ["lease_lost=True"]
    assert scalar(dsn, "SELECT finished_at IS NOT NULL FROM attempts WHERE job_id = %s",
                  async_id)  # the async handler saw its cancellation
    return sync_id, async_id


def test_lost_lease_cancels_async_handlers_and_tells_sync_ones(dsn: str) -> None:
    def reclaim_and_claim_elsewhere(sync_id: int, async_id: int) -> None:
        query(dsn, "UPDATE pgjobs.jobs SET lease_token = gen_random_uuid() "
                   "WHERE state = 'running'")

    for job_id in two_jobs_stopped_by(dsn, reclaim_and_claim_elsewhere):
        assert job_state(dsn, job_id) == "running"  # untouched: the new owner's to finish


def test_an_operator_cancel_stops_running_handlers_at_the_next_heartbeat(dsn: str) -> None:
    def cancel(sync_id: int, async_id: int) -> None:
        changes = app.cancel_jobs(None, [sync_id, async_id], "ops")
        assert [(c.was, c.state) for c in changes] == [("running", "cancelled")] * 2

    for job_id in two_jobs_stopped_by(dsn, cancel):
        row = job(dsn, job_id)
        assert row["state"] == "cancelled" and row["meta"] == {"cancel_reason": "ops"}
        assert row["lease_token"] is None and row["result"] is None


# -- processes ---------------------------------------------------------------------------


def test_a_sigkilled_workers_job_is_completed_by_another_after_the_lease(
    dsn: str, spawn: Callable[..., WorkerProcess]
) -> None:
    job_id = enqueue(dsn, basic.effect, sleep=60)
    enqueued_at = job(dsn, job_id)["run_at"]
    first = spawn("--lease", "2")
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM attempts") == 1, 30, "first attempt")
    first.signal(signal.SIGKILL)
    first.wait()
    query(dsn, "UPDATE pgjobs.jobs SET args = '{\"sleep\": 0}' WHERE id = %s", job_id)
    spawn("--lease", "2", "--poll-interval", "0.2")
    wait_until(lambda: job_state(dsn, job_id) == "succeeded", 30, "the job to succeed")
    row = job(dsn, job_id)
    assert row["recoveries"] == 1 and row["attempt"] == 1
    assert row["run_at"] == enqueued_at  # reclaimed into its place in line
    assert row["errors"][0]["type"] == "pgjobs.WorkerLost"  # type: ignore[index]
    assert scalar(dsn, "SELECT count(*) FROM effects") == 1
    assert scalar(dsn, "SELECT count(*) FROM attempts") == 2


def test_sigterm_lets_running_jobs_finish_and_marks_the_worker_stopped(
    dsn: str, spawn: Callable[..., WorkerProcess]
) -> None:
    job_id = enqueue(dsn, basic.busy, seconds=1.0)
    worker = spawn("--shutdown-timeout", "20")
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM attempts") == 1, 30, "job start")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert job_state(dsn, job_id) == "succeeded"
    assert job(dsn, job_id)["result"] == "done"
    assert query(dsn, "SELECT state, stopped_at IS NOT NULL FROM pgjobs.workers") == [
        ("stopped", True)]


def test_sigterm_releases_unfinished_jobs_without_spending_an_attempt(
    dsn: str, spawn: Callable[..., WorkerProcess]
) -> None:
    sync_id = enqueue(dsn, basic.stubborn, seconds=4)
    async_id = enqueue(dsn, basic.async_busy, seconds=60)
    enqueued_at = {i: job(dsn, i)["run_at"] for i in (sync_id, async_id)}
    worker = spawn("--shutdown-timeout", "0.5")
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM attempts") == 2, 30, "jobs start")
    worker.signal(signal.SIGTERM)
    after = enqueue(dsn, basic.noop)  # no claims after SIGTERM
    assert worker.wait(30) == 0
    for job_id in (sync_id, async_id):
        row = job(dsn, job_id)
        assert row["state"] == "available" and row["attempt"] == 0, row
        assert row["lease_token"] is None
        assert row["run_at"] == enqueued_at[job_id]  # its place in line, ahead of `after`
    assert job_state(dsn, after) == "available"
    assert "released" in worker.log() or "interrupting" in worker.log()


def test_sigtstp_quiets_the_worker(dsn: str, spawn: Callable[..., WorkerProcess]) -> None:
    worker = spawn("--poll-interval", "0.1")
    wait_until(lambda: scalar(dsn, "SELECT state FROM pgjobs.workers") == "running", 30,
               "worker registration")
    worker.signal(signal.SIGTSTP)
    wait_until(lambda: scalar(dsn, "SELECT state FROM pgjobs.workers") == "quiet", 30,
               "quiet state")
    job_id = enqueue(dsn, basic.noop)
    time.sleep(0.5)  # several poll intervals: a running worker would have claimed it
    assert job_state(dsn, job_id) == "available"
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0


def test_burst_worker_exits_when_the_queue_is_empty(
    dsn: str, spawn: Callable[..., WorkerProcess]
) -> None:
    ids = [enqueue(dsn, basic.double, x=i) for i in range(20)]
    worker = spawn("--burst", "--concurrency", "4")
    assert worker.wait(60) == 0
    assert {job_state(dsn, i) for i in ids} == {"succeeded"}
    log = worker.log()
    assert "started: queues=default concurrency=4" in log
    assert "20 job(s) in" in log and "succeeded=20" in log  # the summary, at shutdown
    assert "outcome=succeeded" not in log  # a DEBUG line


def test_debug_logs_a_line_per_job(dsn: str, spawn: Callable[..., WorkerProcess]) -> None:
    job_id = enqueue(dsn, basic.double, x=1)
    worker = spawn("--burst", "--log-level", "DEBUG")
    assert worker.wait(60) == 0
    assert f"job id={job_id} task=double " in worker.log()
    assert "outcome=succeeded duration_ms=" in worker.log()


def test_notifications_wake_an_idle_worker_long_before_its_poll(
    dsn: str, spawn: Callable[..., WorkerProcess]
) -> None:
    spawn("--poll-interval", "120")
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM pgjobs.workers") == 1, 30, "worker")
    time.sleep(0.5)  # let it finish its first poll and LISTEN
    job_id = enqueue(dsn, basic.noop)
    wait_until(lambda: job_state(dsn, job_id) == "succeeded", 30, "the notified job")


def test_a_worker_refuses_a_schema_at_another_revision(dsn: str) -> None:
    query(dsn, "UPDATE pgjobs.alembic_version SET version_num = '0000'")
    head = _migrate.head_revision()
    with pytest.raises(pgjobs.SchemaNotReady, match=f"at revision 0000, not {head}"):
        drain(app)


def test_worker_command_errors_are_one_clear_line(dsn: str) -> None:
    worker = WorkerProcess(dsn, app="workerapps.nope:app")
    try:
        assert worker.wait(30) == 1
        assert "cannot import 'workerapps.nope'" in worker.log()
    finally:
        worker.close()
    bad = WorkerProcess(dsn, "--queues", "bad queue!")
    try:
        assert bad.wait(30) == 1
        assert "invalid queue name" in bad.log()
    finally:
        bad.close()



def test_a_worker_with_every_slot_busy_still_reclaims_lost_jobs(
    dsn: str, spawn: Callable[..., WorkerProcess]
) -> None:
    busy_id = enqueue(dsn, basic.busy, seconds=20)
    worker = spawn("--concurrency", "1", "--lease", "2")
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM attempts") == 1, 30, "busy job start")
    lost_id = enqueue(dsn, basic.noop)
    (lost,) = claim(dsn, lease=1.0)  # a claimer that then vanishes
    assert lost.id == lost_id
    wait_until(lambda: scalar(dsn, "SELECT recoveries FROM pgjobs.jobs WHERE id = %s",
                              lost_id) == 1, 20, "the reclaim while every slot is busy")
    assert job_state(dsn, busy_id) == "running"
    worker.signal(signal.SIGTERM)


def test_outcomes_with_nul_are_stored_safely(dsn: str) -> None:
    result_id = enqueue(dsn, basic.nul_result)
    error_id = enqueue(dsn, basic.nul_error)
    assert drain(app) == {"succeeded": 1, "dead": 1}
    assert job(dsn, result_id)["result"] == {"unserialisable_result": "'a\\x00b'"}
    assert job(dsn, error_id)["errors"][0]["message"] == "bad\\x00byte"  # type: ignore[index]


def test_a_broken_backoff_falls_back_to_the_default(dsn: str) -> None:
    job_id = enqueue(dsn, basic.broken_backoff)
    assert drain(app) == {"retry": 1}
    row = job(dsn, job_id)
    assert row["state"] == "available" and row["attempt"] == 1
    assert scalar(dsn, "SELECT run_at > now() + interval '10 s' FROM pgjobs.jobs "
                       "WHERE id = %s", job_id)


def test_system_exit_in_a_handler_is_a_failure_not_a_worker_exit(dsn: str) -> None:
    failed = enqueue(dsn, basic.exits)
    fine = enqueue(dsn, basic.double, x=2)
    assert drain(app) == {"dead": 1, "succeeded": 1}
    assert job(dsn, failed)["errors"][0]["type"] == "SystemExit"  # type: ignore[index]
    assert job_state(dsn, fine) == "succeeded"


def test_retry_in_zero_retries_at_once_and_error_types_are_public(dsn: str) -> None:
    job_id = enqueue(dsn, basic.retry_now)
    assert drain(app) == {"retry": 2, "dead": 1}
    row = job(dsn, job_id)
    assert row["attempt"] == 3
    assert {e["type"] for e in row["errors"]} == {"pgjobs.Retry"}  # type: ignore[attr-defined]


def test_a_handlers_own_timeout_error_is_not_a_job_timeout(dsn: str) -> None:
    job_id = enqueue(dsn, basic.own_timeout)
    assert drain(app) == {"dead": 1}
    assert job(dsn, job_id)["errors"][0]["type"] == "TimeoutError"  # type: ignore[index]


def test_a_row_locked_by_a_handlers_transaction_does_not_stall_other_leases(dsn: str) -> None:
    lingering = enqueue(dsn, basic.complete_then_linger, seconds=3.5)
    neighbour = enqueue(dsn, basic.busy, seconds=3.5)
    assert drain(app, lease=1.0, concurrency=2) == {"succeeded": 2}
    for job_id in (lingering, neighbour):
        row = job(dsn, job_id)
        assert row["recoveries"] == 0 and row["attempt"] == 1, row
    assert scalar(dsn, "SELECT count(*) FROM attempts") == 2


def test_queues_given_as_a_string_are_not_split_into_letters() -> None:
    assert pgjobs.WorkerConfig(queues="mail").queues == ("mail",)  # type: ignore[arg-type]
    assert pgjobs.WorkerConfig(queues="mail, sms").queues == (  # type: ignore[arg-type]
        "mail", "sms")


def test_a_polite_handler_is_released_at_sigterm_without_spending_an_attempt(
    dsn: str, spawn: Callable[..., WorkerProcess]
) -> None:
    job_id = enqueue(dsn, basic.polite, seconds=60)
    worker = spawn("--shutdown-timeout", "60")
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM attempts") == 1, 30, "job start")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0  # well before the 60 s grace period
    row = job(dsn, job_id)
    assert row["state"] == "available" and row["attempt"] == 0
    assert row["meta"] == {"snoozed": "shutting down"}


def test_a_second_sigterm_cuts_the_grace_period_short(
    dsn: str, spawn: Callable[..., WorkerProcess]
) -> None:
    job_id = enqueue(dsn, basic.async_busy, seconds=120)
    worker = spawn("--shutdown-timeout", "120")
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM attempts") == 1, 30, "job start")
    worker.signal(signal.SIGTERM)
    wait_until(lambda: scalar(dsn, "SELECT state FROM pgjobs.workers") == "stopping", 30,
               "stopping state")
    worker.signal(signal.SIGTERM)
    assert worker.wait(60) == 0  # not the 120 s grace period
    assert job(dsn, job_id)["state"] == "available"


def test_sigterm_stops_a_worker_still_waiting_for_the_database_at_start() -> None:
    """Nothing listens on the port: the worker keeps retrying its first connection, and a
    SIGTERM ends it cleanly (exit 0, saying why) instead of waiting for a SIGKILL."""
    worker = WorkerProcess("postgresql://postgres@127.0.0.1:1/nowhere")
    try:
        wait_until(lambda: "claim connection failed" in worker.log(), 30,
                   "the worker to retry its first connection")
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.log()
        assert "stopped before the database could be reached" in worker.log()
    finally:
        worker.close()


def test_the_worker_refuses_a_schema_flag_that_contradicts_the_app(dsn: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PGJOBS_SCHEMA"}
    env["PYTHONPATH"] = str(TESTS)
    done = subprocess.run(
        [sys.executable, "-m", "pgjobs", "--dsn", dsn, "--schema", "other_schema", "worker",
         "--app", "workerapps.basic:app"],
        env=env, cwd=str(TESTS), capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1
    assert "the app's schema decides" in done.stderr


@pytest.mark.parametrize(("prepare", "mode"), [(True, "force_generic_plan"), (False, "auto")])
def test_the_claim_connection_keeps_generic_plans_unless_it_prepares_nothing(
    shared_dsn: str, prepare: bool, mode: str
) -> None:
    """The claim statements are planned once per connection, not at each claim (the plan
    cache alone replans job_claim_limited every time, ~2 ms). Behind PgBouncer nothing is
    prepared and no session setting is left on a pooled server connection."""
    from pgjobs.db.connection import Connector

    async def setting() -> str:
        connector = Connector(shared_dsn, "claim", prepare, generic_plans=True)
        try:
            conn = await connector.get()
            cursor = await conn.execute("SHOW plan_cache_mode")
            row = await cursor.fetchone()
            assert row is not None
            return str(row[0])
        finally:
            await connector.close()

    assert asyncio.run(setting()) == mode


def test_plain_successes_take_the_short_statement_and_the_rest_the_full_one() -> None:
    """A flush of plain successes of jobs without a unique key is written by
    job_complete_succeeded; a result, an error, meta or a unique key anywhere in the
    flush sends the whole flush through job_complete_many."""
    from pgjobs.worker.completer import Completer, Pending

    def pending(job_id: int, outcome: outcomes.Outcome, unique: bool = False
                ) -> tuple[Pending, leases.Row]:
        claimed = ClaimedJob(job_id, "t", "default", {}, 1, 3, f"token-{job_id}", 0, None, {},
                             unique_hold=unique)
        row = leases.outcome_row(outcome)
        assert row is not None
        return Pending(JobContext(claimed, app.queries), outcome), row

    completer = Completer(None, app.queries, lambda _: None)  # type: ignore[arg-type]
    plain = [pending(1, outcomes.Outcome("succeeded")), pending(2, outcomes.Outcome(
        "succeeded", delay=5))]
    short = completer._statement(plain)
    assert short.text is app.queries.job_complete_succeeded
    assert short.params == {"jobs": "1:token-1,2:token-2"}
    for other in (pending(3, outcomes.Outcome("succeeded", result="7")),
                  pending(3, outcomes.Outcome("retry", error={"m": 1})),
                  pending(3, outcomes.Outcome("cancelled", meta={"m": 1})),
                  pending(3, outcomes.Outcome("succeeded"), unique=True)):
        assert completer._statement([*plain, other]).text is app.queries.job_complete_many
