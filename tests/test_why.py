"""``pgjobs.why(id)`` and ``pgjobs jobs why ID``: one test per cause, each setting up the
blocking fact with pgjobs' own statements (enqueue, the claim, queue settings, worker
registration) and checking that the answer names it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

import pgjobs
from pgjobs.db import claim, queues, workers
from pgjobs.ops.cli import cli
from tests.helpers import WorkerProcess, query, scalar, wait_until

Conn = psycopg.Connection[Any]


@pytest.fixture
def app(fresh_dsn: str) -> Iterator[pgjobs.App]:
    application = pgjobs.App(dsn=fresh_dsn)

    @application.job(name="plain")
    def plain() -> None: ...

    @application.job(name="keyed", concurrency_key="customer:{c}", concurrency_limit=1)
    def keyed(c: int) -> None: ...

    @application.job(name="rated", concurrency_key="api:{c}", rate_limit=1,
                     rate_period=timedelta(hours=1))
    def rated(c: int) -> None: ...

    @application.job(name="once", unique_for=timedelta(milliseconds=1), unique_until="start")
    def once() -> None: ...

    @application.job(name="single", unique_for=timedelta(hours=1))
    def single() -> None: ...

    yield application
    application.close()


def why(app: pgjobs.App, job_id: int) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in query(app.dsn, "SELECT * FROM pgjobs.why(%s)", job_id)]


def causes(app: pgjobs.App, job_id: int) -> list[str]:
    return [cause for cause, _ in why(app, job_id)]


def reason(app: pgjobs.App, job_id: int, cause: str) -> str:
    found = [text for c, text in why(app, job_id) if c == cause]
    assert len(found) == 1, why(app, job_id)
    return found[0]


def live_worker(app: pgjobs.App, tasks: tuple[str, ...] = ("plain", "keyed", "rated", "once",
                                                           "single")) -> int:
    """A registered worker of queue default, heard from now (as `pgjobs worker` does)."""
    with psycopg.connect(app.dsn, autocommit=True) as conn:
        worker_id: int = workers.register(app.queries, "test", 1, ["default"], 4, "test", 30.0,
                                          tasks).run(conn)
    return worker_id


def claim_one(app: pgjobs.App, worker_id: int, limited: bool = False) -> list[int]:
    statement = app.queries.job_claim_limited if limited else app.queries.job_claim
    with psycopg.connect(app.dsn, autocommit=True) as conn:
        return [job.id for job in claim.claim(app.queries, statement, ["default"], 1,
                                              timedelta(minutes=5), worker_id).run(conn)]


def test_a_job_that_does_not_exist(app: pgjobs.App) -> None:
    assert causes(app, 10**9) == ["missing"]
    shown = CliRunner().invoke(cli, ["jobs", "why", str(10**9)],
                               env={"PGJOBS_DATABASE_URL": app.dsn}, prog_name="pgjobs")
    assert shown.exit_code == 1 and "never enqueued" in shown.output


def test_nothing_blocks_a_due_job(app: pgjobs.App) -> None:
    live_worker(app)
    first = app.enqueue(None, "plain").id
    second = app.enqueue(None, "plain").id
    assert causes(app, first) == ["due"]
    assert "1 job(s) of queue 'default' are ahead" in reason(app, second, "due")
    shown = CliRunner().invoke(cli, ["jobs", "why", str(second)],
                               env={"PGJOBS_DATABASE_URL": app.dsn}, prog_name="pgjobs")
    assert shown.exit_code == 0
    assert shown.output == f"job {second}: {reason(app, second, 'due')}\n"


def test_scheduled_for_later(app: pgjobs.App) -> None:
    live_worker(app)
    job_id = app.task("plain").options(run_in=timedelta(hours=2)).enqueue().id
    assert causes(app, job_id) == ["scheduled"]
    assert "scheduled for later" in reason(app, job_id, "scheduled")


def test_waiting_for_a_retry_names_the_failure(app: pgjobs.App) -> None:
    live_worker(app)
    job_id = app.enqueue(None, "plain").id
    query(app.dsn, """UPDATE pgjobs.jobs SET attempt = 1, run_at = now() + interval '1 hour',
                      errors = '[{"attempt": 1, "type": "OSError", "message": "disk full"}]'
                      WHERE id = %s""", job_id)
    text = reason(app, job_id, "scheduled")
    assert "waits for its retry" in text and "OSError: disk full" in text


def test_queue_paused(app: pgjobs.App) -> None:
    live_worker(app)
    job_id = app.enqueue(None, "plain").id
    with psycopg.connect(app.dsn, autocommit=True) as conn:
        queues.set_paused(app.queries, "default", True, app.config.channel).run(conn)
    assert causes(app, job_id) == ["paused"]
    assert "queue 'default' is paused" in reason(app, job_id, "paused")


def test_queue_concurrency_limit_full_names_the_running_jobs(app: pgjobs.App) -> None:
    worker_id = live_worker(app)
    first, second = (app.enqueue(None, "plain").id for _ in range(2))
    with psycopg.connect(app.dsn, autocommit=True) as conn:
        queues.set_limits(app.queries, "default", app.config.channel, concurrency_limit=1,
                          set_concurrency=True).run(conn)
    assert claim_one(app, worker_id, limited=True) == [first]
    assert claim_one(app, worker_id, limited=True) == []  # the claim agrees
    assert causes(app, second) == ["queue_concurrency"]
    assert f"1 of 1 running (jobs {first})" in reason(app, second, "queue_concurrency")


def test_queue_rate_window_full(app: pgjobs.App) -> None:
    worker_id = live_worker(app)
    first, second = (app.enqueue(None, "plain").id for _ in range(2))
    with psycopg.connect(app.dsn, autocommit=True) as conn:
        queues.set_limits(app.queries, "default", app.config.channel, rate_limit=1,
                          rate_period=timedelta(hours=1), set_rate=True).run(conn)
    assert claim_one(app, worker_id, limited=True) == [first]
    query(app.dsn, "UPDATE pgjobs.jobs SET state = 'succeeded', lease_token = NULL, "
                   "lease_expires_at = NULL, finished_at = now() WHERE id = %s", first)
    assert claim_one(app, worker_id, limited=True) == []
    assert causes(app, second) == ["queue_rate"]
    assert "has used its rate limit: 1 starts in the last 01:00:00" in reason(
        app, second, "queue_rate")


def test_per_key_concurrency_limit_full_names_the_running_jobs(app: pgjobs.App) -> None:
    worker_id = live_worker(app)
    first = app.enqueue(None, "keyed", c=7).id
    second = app.enqueue(None, "keyed", c=7).id
    other_key = app.enqueue(None, "keyed", c=8).id
    assert claim_one(app, worker_id, limited=True) == [first]
    assert causes(app, second) == ["key_concurrency"]
    assert f"key 'customer:7' is at its concurrency limit: 1 of 1 running (jobs {first})" in \
        reason(app, second, "key_concurrency")
    assert causes(app, other_key) == ["due"]


def test_per_key_rate_window_full(app: pgjobs.App) -> None:
    worker_id = live_worker(app)
    first = app.enqueue(None, "rated", c=1).id
    second = app.enqueue(None, "rated", c=1).id
    assert claim_one(app, worker_id, limited=True) == [first]
    assert claim_one(app, worker_id, limited=True) == []
    assert causes(app, second) == ["key_rate"]
    assert "key 'api:1' has used its rate limit" in reason(app, second, "key_rate")


def test_unique_hold_locked_by_another_transaction(app: pgjobs.App) -> None:
    live_worker(app)
    job_id = app.enqueue(None, "once").id
    wait_until(lambda: scalar(app.dsn, "SELECT expires_at <= now() FROM pgjobs.unique_keys"),
               what="the hold to expire")
    with psycopg.connect(app.dsn) as taker:
        # a new enqueue takes the expired hold over, and holds it until it commits
        taken = app.enqueue(taker, "once")
        assert taken.id != job_id and not taken.duplicate
        pid = taker.info.backend_pid
        assert causes(app, job_id) == ["unique_hold"]
        assert f"locked by another transaction (backend pid {pid})" in reason(
            app, job_id, "unique_hold")
        taker.rollback()
    assert causes(app, job_id) == ["due"]


def test_a_finished_jobs_unique_key_held_by_another_job(app: pgjobs.App) -> None:
    live_worker(app)
    job_id = app.enqueue(None, "single").id
    app.cancel_jobs(None, [job_id], reason="oops")
    holder = app.enqueue(None, "single").id
    assert causes(app, job_id) == ["cancelled", "unique_hold"]
    assert "cancelled" in reason(app, job_id, "cancelled")
    assert f"held by job {holder}" in reason(app, job_id, "unique_hold")


def test_expired(app: pgjobs.App) -> None:
    live_worker(app)
    job_id = app.task("plain").options(expires_in=timedelta(hours=1)).enqueue().id
    query(app.dsn, "UPDATE pgjobs.jobs SET expires_at = now() - interval '1 second' "
                   "WHERE id = %s", job_id)
    assert causes(app, job_id) == ["expired"]  # past its deadline, not yet marked
    assert "has passed before it started" in reason(app, job_id, "expired")
    query(app.dsn, "UPDATE pgjobs.jobs SET state = 'expired', finished_at = now() "
                   "WHERE id = %s", job_id)
    assert causes(app, job_id) == ["expired"]
    assert "it expired: it had not started by its deadline" in reason(app, job_id, "expired")


def test_dead_with_its_last_error(app: pgjobs.App) -> None:
    job_id = app.enqueue(None, "plain").id
    query(app.dsn, """UPDATE pgjobs.jobs SET state = 'dead', attempt = 3, finished_at = now(),
                      errors = '[{"attempt": 3, "at": "t", "type": "KeyError",
                                  "message": "no such customer"}]' WHERE id = %s""", job_id)
    assert causes(app, job_id) == ["dead"]
    assert "dead after 3 attempt(s)" in reason(app, job_id, "dead")
    assert "KeyError: no such customer" in reason(app, job_id, "dead")


def test_no_live_worker_serves_its_queue(app: pgjobs.App) -> None:
    job_id = app.enqueue(None, "plain").id
    assert causes(app, job_id) == ["no_worker"]
    stale = live_worker(app)
    query(app.dsn, "UPDATE pgjobs.workers SET heartbeat_at = now() - interval '1 hour' "
                   "WHERE id = %s", stale)
    assert causes(app, job_id) == ["no_worker"]  # silent for longer than its lease
    other_queue = app.task("plain").options(queue="mail").enqueue().id
    live_worker(app)
    assert causes(app, job_id) == ["due"]
    assert "`pgjobs worker --queues mail`" in reason(app, other_queue, "no_worker")


def test_no_live_worker_knows_its_task(app: pgjobs.App, fresh_dsn: str) -> None:
    job_id = app.enqueue(None, "plain").id
    live_worker(app, tasks=("something.else",))
    assert causes(app, job_id) == ["unknown_task"]
    assert "knows its task 'plain'" in reason(app, job_id, "unknown_task")
    # a real worker records the tasks its app registers
    worker = WorkerProcess(fresh_dsn, "--queues", "nowhere")
    try:
        tasks = wait_until(lambda: scalar(
            fresh_dsn, "SELECT meta->'tasks' FROM pgjobs.workers WHERE pid = %s", worker.pid),
            what="the worker's registration")
        assert "noop" in tasks and "double" in tasks
    finally:
        worker.close()


def test_the_suspect_throttle_after_a_recovery(app: pgjobs.App) -> None:
    worker_id = live_worker(app)
    running_suspect = app.enqueue(None, "plain").id
    waiting_suspect = app.enqueue(None, "plain").id
    query(app.dsn, "UPDATE pgjobs.jobs SET recoveries = 1 WHERE id IN (%s, %s)",
          running_suspect, waiting_suspect)
    assert claim_one(app, worker_id) == [running_suspect]
    assert claim_one(app, worker_id) == []  # the claim agrees: one suspect at a time
    assert causes(app, waiting_suspect) == ["suspect"]
    assert f"job {running_suspect} on worker {worker_id}" in reason(
        app, waiting_suspect, "suspect")
    assert causes(app, running_suspect) == ["running"]
