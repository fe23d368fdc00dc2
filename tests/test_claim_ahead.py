"""Claim-ahead: a worker holds extra claimed jobs only while jobs are shorter than a claim,
and gives back every held job, attempt refunded, when it stops."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

import pgjobs
from pgjobs.worker.claimer import ClaimAhead

pytestmark = pytest.mark.xdist_group("worker")


def test_depth_follows_job_and_claim_times() -> None:
    ahead = ClaimAhead(concurrency=10, limit=100)
    assert ahead.depth() == 0  # nothing measured yet: claim for free slots only
    ahead.claimed(0.002)
    ahead.ran(0.010)  # jobs five times longer than a claim: two slots free per claim
    assert ahead.depth() == 2
    ahead = ClaimAhead(concurrency=10, limit=100)
    ahead.claimed(0.002)
    ahead.ran(0.00001)  # no-op jobs: capped
    assert ahead.depth() == 100
    ahead = ClaimAhead(concurrency=10, limit=100)
    ahead.claimed(0.002)
    ahead.ran(5.0)  # long jobs: never held back from other workers
    assert ahead.depth() == 0
    off = ClaimAhead(concurrency=10, limit=0)
    off.claimed(0.002)
    off.ran(0.00001)
    assert off.depth() == 0


def test_prefetch_is_validated() -> None:
    with pytest.raises(pgjobs.InvalidOption):
        pgjobs.WorkerConfig(prefetch=-1)


def test_stop_releases_held_jobs_with_their_attempt_refunded(fresh_app: pgjobs.App) -> None:
    app = fresh_app
    worker = pgjobs.Worker(app, pgjobs.WorkerConfig(concurrency=1, listen=False, prefetch=50))
    ran: list[int] = []

    @app.job(name="quick")
    async def quick() -> None:
        ran.append(pgjobs.current_job().id)
        if len(ran) == 3:  # by now the worker has measured a claim and a job: it holds more
            assert worker.ready, "expected jobs claimed ahead"
            worker.stop()

    with psycopg.connect(app.dsn) as conn:
        quick.enqueue_many(conn, [{} for _ in range(200)])
    stats = asyncio.run(worker.run())
    assert stats["succeeded"] == 3
    assert stats["released"] > 0
    with psycopg.connect(app.dsn) as conn:
        rows = dict(conn.execute(
            "SELECT state, count(*) FROM pgjobs.jobs GROUP BY state").fetchall())
        attempts = conn.execute(
            "SELECT DISTINCT attempt FROM pgjobs.jobs WHERE state = 'available'").fetchall()
        tokens = conn.execute(
            "SELECT count(*) FROM pgjobs.jobs WHERE lease_token IS NOT NULL").fetchone()
    assert rows == {"succeeded": 3, "available": 197}
    assert attempts == [(0,)]  # the held jobs never ran: no attempt counted
    assert tokens == (0,)
