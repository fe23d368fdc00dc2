"""current_job().transaction() and transaction_async(): a handler's effects and its job's
success commit together on a connection the worker lends, in two round trips."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

import pgjobs
from pgjobs.testing import drain

pytestmark = pytest.mark.xdist_group("worker")

EFFECTS = "CREATE TABLE effects (job_id bigint PRIMARY KEY, note text)"


@pytest.fixture
def app(fresh_app: pgjobs.App, fresh_dsn: str) -> pgjobs.App:
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        conn.execute(EFFECTS)
    return fresh_app


def rows(dsn: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, params or None).fetchall()  # type: ignore[arg-type]


def job_row(dsn: str, job_id: int) -> tuple[Any, ...]:
    [row] = rows(dsn, "SELECT state, attempt, lease_token IS NULL, result FROM pgjobs.jobs "
                      "WHERE id = %s", job_id)
    return row


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_the_effect_and_the_success_commit_together(app: pgjobs.App, fresh_dsn: str,
                                                    kind: str) -> None:
    if kind == "sync":
        @app.job(name="record")
        def record(note: str) -> str:
            job = pgjobs.current_job()
            with job.transaction() as conn:
                conn.execute("INSERT INTO effects VALUES (%s, %s)", (job.id, note))
            assert job.completed
            return "ignored"  # the success (and its result) committed in the block
    else:
        @app.job(name="record")
        async def record(note: str) -> str:
            job = pgjobs.current_job()
            async with job.transaction_async() as conn:
                await conn.execute("INSERT INTO effects VALUES (%s, %s)", (job.id, note))
            return "ignored"

    jobs = record.enqueue_many(None, [{"note": f"n{i}"} for i in range(5)])
    assert drain(app)["succeeded"] == 5
    assert rows(fresh_dsn, "SELECT job_id, note FROM effects ORDER BY job_id") == [
        (j.id, f"n{i}") for i, j in enumerate(jobs)]
    for job in jobs:
        assert job_row(fresh_dsn, job.id) == ("succeeded", 1, True, None)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_an_error_in_the_block_rolls_the_effect_back_and_the_job_retries(
    app: pgjobs.App, fresh_dsn: str, kind: str
) -> None:
    if kind == "sync":
        @app.job(name="fails", max_attempts=3)
        def fails() -> None:
            job = pgjobs.current_job()
            with job.transaction() as conn:
                conn.execute("INSERT INTO effects VALUES (%s, 'x')", (job.id,))
                raise RuntimeError("after the effect")
    else:
        @app.job(name="fails", max_attempts=3)
        async def fails() -> None:
            job = pgjobs.current_job()
            async with job.transaction_async() as conn:
                await conn.execute("INSERT INTO effects VALUES (%s, 'x')", (job.id,))
                raise RuntimeError("after the effect")

    job = fails.enqueue()
    assert drain(app)["retry"] == 1
    assert rows(fresh_dsn, "SELECT count(*) FROM effects") == [(0,)]
    state, attempt, no_lease, _ = job_row(fresh_dsn, job.id)
    assert (state, attempt, no_lease) == ("available", 1, True)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_lost_lease_rolls_the_effect_back_and_raises_lease_lost(
    app: pgjobs.App, fresh_dsn: str, kind: str
) -> None:
    """An operator cancels the job while its handler writes: the COMMIT pipelined with the
    completion rolls back, the handler sees LeaseLost, and the job stays cancelled."""
    seen: list[str] = []

    def cancel_meanwhile(job_id: int) -> None:
        with psycopg.connect(fresh_dsn, autocommit=True) as other:
            app.cancel_jobs(other, [job_id], reason="operator")

    if kind == "sync":
        @app.job(name="lost")
        def lost() -> None:
            job = pgjobs.current_job()
            try:
                with job.transaction() as conn:
                    conn.execute("INSERT INTO effects VALUES (%s, 'x')", (job.id,))
                    cancel_meanwhile(job.id)
            except pgjobs.LeaseLost as exc:
                seen.append(str(exc))
                raise
    else:
        @app.job(name="lost")
        async def lost() -> None:
            job = pgjobs.current_job()
            try:
                async with job.transaction_async() as conn:
                    await conn.execute("INSERT INTO effects VALUES (%s, 'x')", (job.id,))
                    cancel_meanwhile(job.id)
            except pgjobs.LeaseLost as exc:
                seen.append(str(exc))
                raise

    job = lost.enqueue()
    assert drain(app)["lease_lost"] == 1
    assert seen and "does not hold lease" in seen[0]
    assert rows(fresh_dsn, "SELECT count(*) FROM effects") == [(0,)]
    assert job_row(fresh_dsn, job.id)[0] == "cancelled"


def test_transaction_needs_a_worker(app: pgjobs.App) -> None:
    @app.job(name="direct")
    def direct() -> None: ...

    from pgjobs.core.types import ClaimedJob
    from pgjobs.worker.context import JobContext

    ctx = JobContext(ClaimedJob(1, "direct", "default", {}, 1, 1, None, 0, None, {}),
                     app.queries)
    with pytest.raises(pgjobs.PgJobsError, match="running worker"), ctx.transaction():
        pass


def test_job_complete_is_callable_from_sql_and_fenced(app: pgjobs.App, fresh_dsn: str) -> None:
    """Another language's worker can complete a pgjobs job in its own transaction."""
    @app.job(name="external")
    def external() -> None: ...

    job = external.enqueue()
    with psycopg.connect(fresh_dsn) as conn:
        [token] = conn.execute(
            "UPDATE pgjobs.jobs SET state = 'running', lease_token = gen_random_uuid(), "
            "lease_expires_at = now() + interval '1 min', attempt = 1 WHERE id = %s "
            "RETURNING lease_token", (job.id,)).fetchone()  # type: ignore[misc]
    with psycopg.connect(fresh_dsn) as conn:
        conn.execute("SELECT pgjobs.job_complete(%s, %s, '{\"ok\": true}')", (job.id, token))
    assert job_row(fresh_dsn, job.id) == ("succeeded", 1, True, {"ok": True})
    with psycopg.connect(fresh_dsn) as conn, pytest.raises(psycopg.Error) as failed:
        conn.execute("SELECT pgjobs.job_complete(%s, %s)", (job.id, token))
    assert failed.value.sqlstate == "PJ002"
