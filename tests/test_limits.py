"""Queue controls and limits against a real PostgreSQL: claim semantics one statement at
a time, then four worker processes whose recorded runs must never exceed a limit."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

import pgjobs
from pgjobs.core import version as _revision
from pgjobs.db import queries as _queries
from pgjobs.ops import migrate as _migrate
from pgjobs.ops.cli import cli
from pgjobs.testing import drain
from pgjobs.worker import routing
from tests.helpers import job_state, query, scalar, wait_until
from tests.workerapps import limits
from tests.workerprocs import Spawner, spawner, wait_for_running

pytestmark = pytest.mark.xdist_group("limits")

LIMITS_APP = "workerapps.limits:app"


@pytest.fixture
def dsn(fresh_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh database with the spans table; the limits test app points at it."""
    query(fresh_dsn, limits.HARNESS)
    monkeypatch.setenv("PGJOBS_DATABASE_URL", fresh_dsn)
    yield fresh_dsn
    limits.app.close()


@pytest.fixture
def spawn(dsn: str) -> Iterator[Spawner]:
    with spawner(dsn) as start:
        yield start


def pgjobs_cli(dsn: str, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--dsn", dsn, *args])
    assert result.exit_code == 0, result.output
    return result.output


def claim(dsn: str, queues: tuple[str, ...] = ("default",), limit: int = 100,
          statement: str = "job_claim_limited") -> list[int]:
    """One claim statement, as a worker sends it; returns the claimed ids."""
    with psycopg.connect(dsn, autocommit=True) as c:
        rows = c.execute(getattr(limits.app.queries, statement), {
            "queues": list(queues), "limit": limit, "lease": timedelta(seconds=30),
            "worker_id": None}).fetchall()
    return sorted(row[0] for row in rows)


def finish(dsn: str, *ids: int) -> None:
    query(dsn, "UPDATE pgjobs.jobs SET state = 'succeeded', lease_token = NULL, "
               "lease_expires_at = NULL, finished_at = now() WHERE id = ANY(%s)", list(ids))


def enqueue_many(dsn: str, task: pgjobs.Task[..., Any], rows: list[dict[str, Any]]) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [e.id for e in task.enqueue_many(conn, rows)]


# -- one claim at a time -----------------------------------------------------------------


def test_a_paused_queue_is_not_claimed_until_resumed(dsn: str) -> None:
    (paused,) = enqueue_many(dsn, limits.held, [{"seconds": 0}])
    assert "queue 'limited' paused" in pgjobs_cli(dsn, "queue", "pause", "limited")
    (other,) = enqueue_many(dsn, limits.sentinel, [{}])
    assert drain(limits.app) == {"succeeded": 1}  # a real worker claimed around it
    assert job_state(dsn, other) == "succeeded" and job_state(dsn, paused) == "available"
    listing = pgjobs_cli(dsn, "queue", "list").splitlines()
    assert listing[0].split() == ["QUEUE", "PAUSED", "CONCURRENCY", "RATE", "AVAILABLE",
                                  "RUNNING"]
    assert "limited  yes" in "\n".join(listing) and listing[1].split()[-2:] == ["1", "0"]
    pgjobs_cli(dsn, "queue", "resume", "limited")
    assert drain(limits.app) == {"succeeded": 1}
    assert job_state(dsn, paused) == "succeeded"
    # Plain SQL works as well as the command line.
    query(dsn, "UPDATE pgjobs.queues SET paused = true WHERE name = 'limited'")
    enqueue_many(dsn, limits.held, [{"seconds": 0}])
    assert claim(dsn, ("limited",)) == claim(dsn, ("limited",), statement="job_claim") == []


def test_the_plain_claim_leaves_limited_queues_and_keyed_jobs_to_the_limited_one(
    dsn: str,
) -> None:
    held = enqueue_many(dsn, limits.held, [{"seconds": 0}] * 2)
    keyed = enqueue_many(dsn, limits.per_customer, [{"customer_id": 1, "seconds": 0}])
    plain = enqueue_many(dsn, limits.sentinel, [{}])
    pgjobs_cli(dsn, "queue", "limit", "limited", "--concurrency", "1")
    queues = ("default", "limited", "other")
    assert claim(dsn, queues, statement="job_claim") == plain
    assert claim(dsn, queues) == [held[0], *keyed]


def test_queue_concurrency_limit(dsn: str) -> None:
    ids = enqueue_many(dsn, limits.held, [{"seconds": 0}] * 6)
    out = pgjobs_cli(dsn, "queue", "limit", "limited", "--concurrency", "2")
    assert "concurrency 2, rate unlimited" in out
    first = claim(dsn, ("limited",))
    assert first == ids[:2] and claim(dsn, ("limited",)) == []
    finish(dsn, first[0])
    assert claim(dsn, ("limited",)) == [ids[2]]
    pgjobs_cli(dsn, "queue", "limit", "limited", "--concurrency", "0")  # removes it
    assert claim(dsn, ("limited",)) == ids[3:]
    assert scalar(dsn, "SELECT concurrency_limit FROM pgjobs.queues") is None


def test_queue_rate_limit_is_a_sliding_window_over_starts(dsn: str) -> None:
    ids = enqueue_many(dsn, limits.rated, [{}] * 5)
    pgjobs_cli(dsn, "queue", "limit", "rated", "--rate", "3", "--per", "3600")
    assert claim(dsn, ("rated",), limit=2) == ids[:2]
    finish(dsn, *ids[:2])  # finishing does not give starts back
    assert claim(dsn, ("rated",)) == [ids[2]]
    assert claim(dsn, ("rated",)) == []
    # Move the recorded starts out of the window: room for three more starts.
    query(dsn, "UPDATE pgjobs.queues SET recent_starts = ARRAY(SELECT s - interval '2 hours' "
               "FROM unnest(recent_starts) s)")
    assert claim(dsn, ("rated",)) == ids[3:]
    # Starts that left the window are forgotten: only the two new ones are kept.
    assert scalar(dsn, "SELECT cardinality(recent_starts) FROM pgjobs.queues") == 2


def test_key_concurrency_limit_per_customer_without_blocking_other_keys(dsn: str) -> None:
    # Customer 1 floods the queue first; customers 2 and 3 come after it.
    flood = enqueue_many(dsn, limits.per_customer,
                         [{"customer_id": 1, "seconds": 0}] * 10)
    later = enqueue_many(dsn, limits.per_customer,
                         [{"customer_id": c, "seconds": 0} for c in (2, 3, 2, 3, 2, 3)])
    assert scalar(dsn, "SELECT concurrency_key FROM pgjobs.jobs WHERE id = %s",
                  later[0]) == "customer:2"
    assert claim(dsn, limit=5) == flood[:2]  # the batch stops at customer 1's limit
    second = claim(dsn)
    assert second == later[:4]  # customer 1 is full: the claim steps over its jobs
    assert claim(dsn) == []
    finish(dsn, flood[0], later[0])
    assert claim(dsn) == [flood[2], later[4]]
    running = query(dsn, "SELECT concurrency_key, count(*) FROM pgjobs.jobs "
                         "WHERE state = 'running' GROUP BY 1 ORDER BY 1")
    assert running == [("customer:1", 2), ("customer:2", 2), ("customer:3", 2)]
    assert query(dsn, "SELECT key, claimed FROM pgjobs.limit_keys ORDER BY 1") == [
        ("customer:1", 3), ("customer:2", 3), ("customer:3", 2)]


def test_key_rate_limit(dsn: str) -> None:
    app = pgjobs.App(dsn=dsn)

    @app.job(name="call_api", concurrency_key="api:{account}", rate_limit=3,
             rate_period=timedelta(hours=1))
    def call_api(account: str) -> None: ...

    ids = enqueue_many(dsn, call_api, [{"account": "a"}] * 4 + [{"account": "b"}])
    assert claim(dsn) == ids[:3] + ids[4:]
    assert claim(dsn) == []
    starts = query(dsn, "SELECT DISTINCT started_at FROM pgjobs.jobs WHERE state = 'running' "
                        "AND concurrency_key = 'api:a'")
    recorded = scalar(dsn, "SELECT recent_starts FROM pgjobs.limit_keys WHERE key = 'api:a'")
    assert [s for (s,) in starts] == recorded[:1] and len(recorded) == 3  # one grant of 3
    query(dsn, "UPDATE pgjobs.limit_keys SET recent_starts = ARRAY(SELECT s - interval "
               "'2 hours' FROM unnest(recent_starts) s)")
    assert claim(dsn) == [ids[3]]


def test_key_limits_are_computed_and_checked_at_enqueue(dsn: str) -> None:
    app = pgjobs.App(dsn=dsn)

    @app.job(name="wide", concurrency_limit=1)
    def wide() -> None: ...

    @app.job(name="keyed", concurrency_key="t{tenant}:{region}", concurrency_limit=3,
             rate_limit=10, rate_period=60)
    def keyed(tenant: int, region: str) -> None: ...

    @app.job(name="optional", concurrency_key=lambda user=None: user, concurrency_limit=1)
    def optional(user: str | None = None) -> None: ...

    with psycopg.connect(dsn) as conn:
        ids = [wide.enqueue(conn).id, keyed.enqueue(conn, tenant=4, region="eu").id,
               optional.enqueue(conn).id, optional.enqueue(conn, user="u1").id]
    rows = query(dsn, "SELECT concurrency_key, concurrency_limit, rate_limit, rate_period "
                      "FROM pgjobs.jobs WHERE id = ANY(%s) ORDER BY id", ids)
    assert rows == [("wide", 1, None, None), ("t4:eu", 3, 10, timedelta(seconds=60)),
                    (None, None, None, None), ("u1", 1, None, None)]
    with pytest.raises(pgjobs.InvalidOption, match="needs concurrency_limit"):
        app.job(name="x", concurrency_key="k")(lambda: None)
    with pytest.raises(pgjobs.InvalidOption, match="rate_limit and rate_period together"):
        app.job(name="y", rate_limit=5)(lambda: None)
    with pytest.raises(pgjobs.InvalidOption, match="concurrency_limit must be an int"):
        app.job(name="z", concurrency_limit=0)(lambda: None)

    @app.job(name="typo", concurrency_key="c:{customer}", concurrency_limit=1)
    def typo(customer_id: int) -> None: ...

    with psycopg.connect(dsn) as conn, pytest.raises(pgjobs.InvalidArgs, match="customer"):
        typo.enqueue(conn, customer_id=1)


def test_migration_0003_downgrades_and_upgrades_again(empty_dsn: str) -> None:
    _migrate.upgrade(empty_dsn)
    _migrate.downgrade(empty_dsn, "pgjobs", "0002")
    assert scalar(empty_dsn, "SELECT to_regclass('pgjobs.limit_keys')") is None
    assert scalar(empty_dsn, "SELECT count(*) FROM information_schema.columns WHERE "
                             "table_schema = 'pgjobs' AND column_name = 'concurrency_key'") == 0
    _migrate.upgrade(empty_dsn)
    version = scalar(empty_dsn, "SELECT version_num FROM pgjobs.alembic_version")
    assert version == _revision.HEAD_REVISION


# -- four worker processes ---------------------------------------------------------------


def most_at_once(dsn: str, scope: str) -> int:
    """The most handler runs of ``scope`` that overlapped (a maximum is at some start)."""
    return int(scalar(dsn, """
        SELECT max((SELECT count(*) FROM public.spans o
                    WHERE o.scope = s.scope AND o.started_at <= s.started_at
                      AND o.finished_at > s.started_at))
        FROM public.spans s WHERE s.scope = %s""", scope))


def most_starts_in_a_window(dsn: str, where: str, window: str) -> int:
    """The most claims (jobs.started_at, which the limiter records) in any window of
    length ``window`` ending at a start: (t - window, t]."""
    return int(scalar(dsn, f"""
        SELECT max((SELECT count(*) FROM pgjobs.jobs o
                    WHERE {where.replace('{t}', 'o')}
                      AND o.started_at > j.started_at - interval '{window}'
                      AND o.started_at <= j.started_at))
        FROM pgjobs.jobs j WHERE {where.replace('{t}', 'j')}"""))


def test_limits_hold_across_four_worker_processes(dsn: str, spawn: Spawner) -> None:
    pgjobs_cli(dsn, "queue", "limit", "limited", "--concurrency", "3")
    pgjobs_cli(dsn, "queue", "limit", "rated", "--rate", "5", "--per", "1")
    workers = [spawn("--concurrency", "4", "--poll-interval", "0.05", app=LIMITS_APP)
               for _ in range(4)]
    # All four running before the jobs go in: a worker that took longer to start on a
    # busy machine found every job already taken (a CI run saw 3 of 4 processes run jobs).
    wait_for_running(dsn, 4, "the four workers")
    enqueue_many(dsn, limits.held, [{"seconds": 0.25}] * 24)
    enqueue_many(dsn, limits.per_customer,
                 [{"customer_id": c, "seconds": 0.2} for c in (1, 2, 3) for _ in range(8)])
    enqueue_many(dsn, limits.rated, [{}] * 15)
    enqueue_many(dsn, limits.key_rated, [{"account": "a"}] * 9)
    total = scalar(dsn, "SELECT count(*) FROM pgjobs.jobs")
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM pgjobs.jobs WHERE state = "
                                   "'succeeded'") == total, 120, "every job to succeed")
    for worker in workers:
        worker.signal(signal.SIGTERM)
    assert [w.wait(60) for w in workers] == [0, 0, 0, 0]

    assert scalar(dsn, "SELECT count(DISTINCT pid) FROM public.spans") == 4
    assert scalar(dsn, "SELECT max(attempt) FROM pgjobs.jobs") == 1  # one start per job
    assert 2 <= most_at_once(dsn, "queue:limited") <= 3
    for customer in (1, 2, 3):
        assert 1 <= most_at_once(dsn, f"customer:{customer}") <= 2
    assert most_starts_in_a_window(dsn, "{t}.queue = 'rated'", "1 second") <= 5
    assert most_starts_in_a_window(dsn, "{t}.concurrency_key = 'api:a'", "1 second") <= 3
    # The rate limits held the work back (15 starts at 5/s, 9 at 3/s take 2 s or more).
    for where in ("queue = 'rated'", "concurrency_key = 'api:a'"):
        assert scalar(dsn, f"SELECT max(started_at) - min(started_at) FROM pgjobs.jobs "
                           f"WHERE {where}") >= timedelta(seconds=2)


def test_a_resumed_queue_wakes_idle_workers(dsn: str, spawn: Spawner) -> None:
    pgjobs_cli(dsn, "queue", "pause", "limited")
    worker = spawn("--poll-interval", "60", app=LIMITS_APP)
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM pgjobs.workers"), 60, "the worker")
    (paused,) = enqueue_many(dsn, limits.held, [{"seconds": 0}])
    (other,) = enqueue_many(dsn, limits.sentinel, [{}])
    wait_until(lambda: job_state(dsn, other) == "succeeded", 30, "the sentinel job")
    assert job_state(dsn, paused) == "available"
    pgjobs_cli(dsn, "queue", "resume", "limited")  # its NOTIFY wakes the worker (poll: 60 s)
    wait_until(lambda: job_state(dsn, paused) == "succeeded", 30, "the resumed job")
    worker.signal(signal.SIGTERM)
    assert worker.wait(60) == 0


# -- the claim router --------------------------------------------------------------------


class FakeClaimConn:
    """Answers the router's queue_limited query with ``limited``; counts the reads."""

    description = ("name",)  # a statement that returns rows
    rowcount = 0

    def __init__(self) -> None:
        self.limited: list[str] = []
        self.reads = 0

    def cursor(self, row_factory: Any = None) -> FakeClaimConn:
        return self

    async def execute(self, query: Any, params: Any) -> FakeClaimConn:
        self.reads += 1
        return self

    async def fetchall(self) -> list[tuple[str]]:
        return [(name,) for name in self.limited]


def router_at(keyed: bool = False) -> tuple[routing.ClaimRouter, list[float], FakeClaimConn]:
    now = [100.0]
    router = routing.ClaimRouter(_queries.Queries("pgjobs"), ["default"], keyed=keyed,
                                 refresh=1.0, clock=lambda: now[0])
    return router, now, FakeClaimConn()


def test_the_router_sweeps_and_rereads_limits_when_idle_not_before_a_notified_claim() -> None:
    router, now, conn = router_at()
    plain, limited = router.queries.job_claim, router.queries.job_claim_limited

    async def scenario() -> None:
        # The first claim knows the limits and sweeps.
        assert await router.statement(conn) is limited and conn.reads == 1
        # Then plain claims, however many, with no extra round trip.
        now[0] += 0.5
        assert await router.statement(conn) is plain and conn.reads == 1
        assert await router.when_idle(conn) is None and conn.reads == 1
        # Once a second, when idle: the limits are re-read and a sweep is due, once.
        now[0] += 0.6
        assert await router.when_idle(conn) is limited and conn.reads == 2
        assert await router.when_idle(conn) is None and conn.reads == 2
        assert await router.statement(conn) is plain and conn.reads == 2
        # A worker never idle still sweeps and re-reads, a second late.
        now[0] += 2.0
        assert await router.statement(conn) is limited and conn.reads == 3
        assert await router.statement(conn) is plain and conn.reads == 3
        # A limit on one of its queues makes every claim limited, and no sweep is needed.
        conn.limited = ["default"]
        now[0] += 1.0
        assert await router.when_idle(conn) is None and conn.reads == 4
        assert await router.statement(conn) is limited
        conn.limited = []
        now[0] += 1.0
        assert await router.when_idle(conn) is limited and conn.reads == 5
        assert await router.statement(conn) is plain

    asyncio.run(scenario())


def test_a_router_for_keyed_tasks_always_claims_limited() -> None:
    router, now, conn = router_at(keyed=True)

    async def scenario() -> None:
        for _ in range(3):
            assert await router.statement(conn) is router.queries.job_claim_limited
            assert await router.when_idle(conn) is None
            now[0] += 0.7

    asyncio.run(scenario())


def test_a_worker_whose_code_does_not_know_a_job_is_keyed_claims_it_by_the_sweep(
    fresh_dsn: str,
) -> None:
    """Another version of the code enqueued a keyed job: this worker's notified (plain)
    claims skip it, and its once-a-second sweep, made when idle, claims it."""
    producer, consumer = pgjobs.App(dsn=fresh_dsn), pgjobs.App(dsn=fresh_dsn)
    ran: list[int] = []

    @producer.job(name="keyed_elsewhere", concurrency_key="n{n}", concurrency_limit=1)
    def keyed(n: int) -> None: ...

    @consumer.job(name="keyed_elsewhere")
    def unkeyed(n: int) -> None:
        ran.append(n)

    async def scenario() -> None:
        worker = pgjobs.Worker(consumer, pgjobs.WorkerConfig(poll_interval=30))
        run = asyncio.create_task(worker.run())
        try:
            await asyncio.sleep(1.5)  # past the first claim's sweep, idle, listening
            await asyncio.to_thread(keyed.enqueue, None, n=7)
            for _ in range(200):
                if ran:
                    break
                await asyncio.sleep(0.05)
        finally:
            worker.stop()
            await run

    try:
        asyncio.run(scenario())
    finally:
        producer.close()
        consumer.close()
    assert ran == [7]
