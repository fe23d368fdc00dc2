"""Leases under stress: stale attempts, reclaim racing completion, long jobs, paused
workers, exhausted pools and a long-held snapshot.

RELIABILITY.md rows: "stale completion", "reclaim races a completion", "long job with a
short lease and heartbeats", "worker paused (SIGSTOP) longer than its lease, then
resumed", "pool exhausted by slow handlers", "a long-held snapshot elsewhere pins vacuum".
"""

from __future__ import annotations

import asyncio
import random
import signal
import threading
from datetime import timedelta
from typing import Any

import psycopg
import pytest

import pgjobs
from pgjobs.core import outcomes
from pgjobs.db.connection import Connector
from pgjobs.worker.completer import Completer
from pgjobs.worker.context import JobContext
from tests.chaos.harness import (
    Fleet,
    all_succeeded,
    assert_exactly_once,
    claim,
    complete_many,
    pause,
    scale,
    states,
)
from tests.helpers import query, scalar, wait_until
from tests.workerapps import chaos
from tests.workerapps.chaos import app

pytestmark = [pytest.mark.chaos, pytest.mark.xdist_group("chaos")]

OUTCOMES = [
    outcomes.Outcome(outcomes.SUCCEEDED, result='"stale"'),
    outcomes.Outcome(outcomes.RETRY, delay=0, error={"message": "stale retry"}),
    outcomes.Outcome(outcomes.DEAD, error={"message": "stale death"}),
    outcomes.Outcome(outcomes.SNOOZED, delay=0, meta={"snoozed": "stale"}),
    outcomes.Outcome(outcomes.CANCELLED, meta={"cancel_reason": "stale"}),
    outcomes.Outcome(outcomes.RELEASED),
]


def heartbeat(conn: psycopg.Connection[Any], ctx: JobContext) -> list[Any]:
    return conn.execute(app.queries.job_heartbeat, {
        "ids": [ctx.id], "tokens": [ctx.job.lease_token], "lease": timedelta(seconds=600),
        "worker_id": None, "progress": [None], "checkpoints": [None]}).fetchall()


def snapshot(conn: psycopg.Connection[Any], job_id: int) -> Any:
    return conn.execute("SELECT to_jsonb(j) FROM pgjobs.jobs j WHERE id = %s",
                        (job_id,)).fetchone()


def every_stale_write_changes_nothing(dsn: str, stale: JobContext) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = snapshot(conn, stale.id)
        for outcome in OUTCOMES:
            assert complete_many(conn, stale, outcome) == set(), outcome.kind
        assert heartbeat(conn, stale) == []
        with conn.transaction(), pytest.raises(pgjobs.LeaseLost):
            stale.complete(conn, result="stale")
        assert asyncio.run(_complete_async(dsn, stale)) == "LeaseLost"
        assert asyncio.run(_flush(dsn, stale)) == 1  # the worker's own path: dropped
        assert snapshot(conn, stale.id) == before


async def _complete_async(dsn: str, ctx: JobContext) -> str:
    async with await psycopg.AsyncConnection.connect(dsn) as aconn:
        try:
            await ctx.complete_async(aconn)
        except pgjobs.LeaseLost:
            return "LeaseLost"
    return "completed"


async def _flush(dsn: str, ctx: JobContext) -> int:
    connector = Connector(dsn, "complete")
    completer = Completer(connector, app.queries, lambda batch: None)
    completer.submit(ctx, random.choice(OUTCOMES))
    await completer.flush()
    await connector.close()
    assert ctx.lease_lost
    return completer.lease_lost


def test_a_stale_attempt_changes_nothing_and_cannot_flip_a_terminal_state(
    db: str, rng: random.Random
) -> None:
    """A claims, its lease expires and is reclaimed, B claims. Every write A can make
    (each outcome, a heartbeat, complete(conn) in its own transaction, complete_async)
    while B runs and after B finished changes nothing; complete raises LeaseLost; B's
    write wins."""
    rounds = scale(6, 60)
    with psycopg.connect(db, autocommit=True) as conn:
        for i in range(rounds):
            queue = f"round{i}"  # B's final outcome may leave the job available
            job_id = chaos.plain.options(queue=queue).enqueue(conn).id
            (a,) = claim(conn, queue=queue)
            conn.execute("UPDATE pgjobs.jobs SET lease_expires_at = now() - interval '1 s' "
                         "WHERE id = %s", (job_id,))
            conn.execute(app.queries.job_reclaim,
                         {"limit": 100, "budget": 10, "channel": app.config.channel})
            (b,) = claim(conn, queue=queue)
            assert (b.id, b.attempt, b.recoveries) == (job_id, 1, 1)
            every_stale_write_changes_nothing(db, a)
            final = rng.choice(OUTCOMES)
            assert complete_many(conn, b, final) == {job_id}
            after = snapshot(conn, job_id)
            every_stale_write_changes_nothing(db, a)
            every_stale_write_changes_nothing(db, b)  # B's own write ended its lease too
            assert snapshot(conn, job_id) == after


@pytest.mark.timeout(scale(120, 600))
def test_reclaim_racing_completions_never_undoes_a_completion(
    db: str, rng: random.Random
) -> None:
    """Completers (fenced complete(conn) in a transaction, or the batched outcome write)
    race reclaimers on jobs whose leases have all just expired. Each job ends exactly one
    way: completed (and still succeeded) or reclaimed (and its completion refused)."""
    n = scale(300, 5000)
    with psycopg.connect(db, autocommit=True) as conn:
        chaos.plain.enqueue_many(conn, [{}] * n)
        ctxs = claim(conn, limit=n)
        conn.execute("UPDATE pgjobs.jobs SET lease_expires_at = clock_timestamp()")
    assert len(ctxs) == n
    rng.shuffle(ctxs)
    completed: set[int] = set()
    refused: set[int] = set()
    reclaimed: list[int] = []
    done = threading.Event()
    seeds = [rng.random() for _ in range(6)]

    def complete(part: list[JobContext], seed: float) -> None:
        local = random.Random(seed)
        with psycopg.connect(db, autocommit=True) as conn:
            for ctx in part:
                if local.random() < 0.5:
                    try:
                        with conn.transaction():
                            ctx.complete(conn)
                            conn.execute("SELECT pg_sleep(%s)", (local.uniform(0, 0.002),))
                        completed.add(ctx.id)
                    except pgjobs.LeaseLost:
                        refused.add(ctx.id)
                elif complete_many(conn, ctx, outcomes.Outcome(outcomes.SUCCEEDED)):
                    completed.add(ctx.id)
                else:
                    refused.add(ctx.id)

    def reclaim(seed: float) -> None:
        local = random.Random(seed)
        with psycopg.connect(db, autocommit=True) as conn:
            while not done.is_set():
                rows = conn.execute(app.queries.job_reclaim,
                                    {"limit": local.randint(1, 5), "budget": 10,
                                     "channel": app.config.channel}).fetchall()
                reclaimed.extend(int(r[0]) for r in rows)
                done.wait(local.uniform(0, 0.01))  # keep the race even

    reclaimers = [threading.Thread(target=reclaim, args=(s,)) for s in seeds[:2]]
    completers = [threading.Thread(target=complete, args=(ctxs[i::4], s))
                  for i, s in enumerate(seeds[2:])]
    for t in reclaimers + completers:
        t.start()
    for t in completers:
        t.join(scale(100, 500))
    done.set()
    for t in reclaimers:
        t.join(30)
    assert len(reclaimed) == len(set(reclaimed)), "a job was reclaimed twice"
    assert completed | refused == {c.id for c in ctxs} and not completed & refused
    assert set(reclaimed) == refused
    assert states(db, completed) == {"succeeded": len(completed)}
    assert states(db, refused) in ({"available": len(refused)}, {})
    print(f"{n} jobs: {len(completed)} completed, {len(refused)} reclaimed first")


@pytest.mark.timeout(scale(120, 300))
def test_a_long_job_with_a_short_lease_runs_once_while_its_lease_moves_forward(
    db: str, fleet: Fleet
) -> None:
    seconds = scale(6.0, 30.0)
    with psycopg.connect(db) as conn:
        job_id = chaos.effect.enqueue(conn, sleep=seconds).id
    args = ["--lease", "3", "--poll-interval", "0.2"]
    fleet.spawn(*args)
    wait_until(lambda: scalar(db, "SELECT count(*) FROM public.chaos_attempts") == 1, 60,
               "the job to start")
    fleet.spawn(*args)  # would reclaim the job if its lease ever lapsed
    samples = []
    while (row := query(db, "SELECT lease_expires_at, lease_expires_at > clock_timestamp() "
                            "FROM pgjobs.jobs WHERE id = %s AND state = 'running'", job_id)):
        samples.append(row[0])
        pause(0.3)
    wait_until(lambda: all_succeeded(db, [job_id]), 60, "the job to succeed")
    assert_exactly_once(db, [job_id])
    assert scalar(db, "SELECT count(*) FROM public.chaos_attempts") == 1
    assert query(db, "SELECT attempt, recoveries FROM pgjobs.jobs WHERE id = %s",
                 job_id) == [(1, 0)]
    assert all(alive for _, alive in samples), samples
    leases = [at for at, _ in samples]
    assert leases == sorted(leases) and len(set(leases)) >= 3, samples


@pytest.mark.timeout(scale(120, 300))
def test_a_worker_paused_past_its_lease_is_overtaken_and_its_late_outcome_refused(
    db: str, fleet: Fleet
) -> None:
    """SIGSTOP (a GC or VM stall) longer than the lease: another worker runs the jobs
    (one effect each); after SIGCONT the paused worker's handlers are told to stop, the
    sync one's write is refused with LeaseLost, and the worker carries on."""
    with psycopg.connect(db) as conn:
        ids = [chaos.stall.enqueue(conn, first=600).id, chaos.astall.enqueue(conn, first=600).id]
    args = ["--lease", "2", "--poll-interval", "0.2"]
    paused = fleet.spawn(*args)
    wait_until(lambda: scalar(db, "SELECT count(*) FROM public.chaos_attempts") == 2, 60,
               "both jobs to start")
    paused.signal(signal.SIGSTOP)
    other = fleet.spawn(*args)
    wait_until(lambda: all_succeeded(db, ids), 60, "the other worker to run both jobs")
    paused.signal(signal.SIGCONT)
    wait_until(lambda: len(query(db, "SELECT 1 FROM public.chaos_notes WHERE pid = %s",
                                 paused.pid)) == 3, 60, "the paused handlers to react")
    notes = sorted(query(db, "SELECT job_id, note FROM public.chaos_notes WHERE pid = %s",
                         paused.pid))
    assert notes == sorted([(ids[0], "stopped=True lease_lost=True"), (ids[0], "LeaseLost"),
                            (ids[1], "cancelled lease_lost=True")])
    assert_exactly_once(db, ids)
    # Run by the other worker: recovered, they are suspects, which it runs each in a
    # process of its own (worker/isolated.py), never in the paused one.
    effect_pids = {pid for (pid,) in query(db, "SELECT pid FROM public.chaos_effects")}
    assert len(effect_pids) == 2 and paused.pid not in effect_pids and other.pid not in effect_pids
    assert query(db, "SELECT DISTINCT attempt, recoveries FROM pgjobs.jobs") == [(1, 1)]
    # The resumed worker is healthy: it runs new work.
    other.signal(signal.SIGTERM)
    assert other.wait(30) == 0
    with psycopg.connect(db) as conn:
        more = [chaos.effect.enqueue(conn).id for _ in range(3)]
    wait_until(lambda: all_succeeded(db, more), 60, "the resumed worker to run new jobs")
    assert query(db, "SELECT DISTINCT pid FROM public.chaos_effects WHERE job_id = ANY(%s)",
                 more) == [(paused.pid,)]
    assert "lost its lease" in paused.log()


@pytest.mark.timeout(scale(120, 300))
def test_slow_handlers_exhausting_the_pools_never_starve_heartbeats(
    db: str, fleet: Fleet
) -> None:
    """Every executor thread busy, handlers queueing for the app's 4-connection pool,
    one burning CPU: heartbeats (their own connection, on the event loop) keep every
    lease alive, and nothing is reclaimed although another worker is watching."""
    hold = scale(4.0, 20.0)
    with psycopg.connect(db) as conn:
        ids = [j.id for j in chaos.pool_hog.enqueue_many(conn, [{"seconds": hold}] * 7)]
        ids.append(chaos.cpu.enqueue(conn, seconds=hold).id)
        ids += [j.id for j in chaos.aslow.enqueue_many(conn, [{"seconds": hold}] * 2)]
    busy = fleet.spawn("--lease", "3", "--concurrency", "10", "--poll-interval", "0.2")
    wait_until(lambda: scalar(db, "SELECT count(*) FROM public.chaos_attempts") == len(ids),
               60, "every handler to start")
    fleet.spawn("--lease", "3", "--poll-interval", "0.2")  # would reclaim a lapsed lease
    lapsed = []
    while not all_succeeded(db, ids):
        lapsed += query(db, "SELECT id FROM pgjobs.jobs WHERE state = 'running' "
                            "AND lease_expires_at < clock_timestamp()")
        pause(0.2)
    assert lapsed == []
    assert query(db, "SELECT DISTINCT attempt, recoveries FROM pgjobs.jobs") == [(1, 0)]
    assert scalar(db, "SELECT count(*) FROM public.chaos_attempts") == len(ids)
    assert busy.alive()


@pytest.mark.timeout(scale(120, 300))
def test_no_pgjobs_transaction_stays_open_across_handlers_while_a_snapshot_is_held(
    db: str, fleet: Fleet
) -> None:
    """Another session holds a snapshot (pinning vacuum) the whole time. While handlers
    run, no pgjobs connection is idle in a transaction or holds a snapshot of its own, and
    the jobs still complete."""
    hold = scale(3.0, 15.0)
    holder = psycopg.connect(db)
    holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    holder.execute("SELECT count(*) FROM pgjobs.jobs")
    try:
        with psycopg.connect(db) as conn:
            ids = [j.id for j in chaos.effect.enqueue_many(conn, [{"sleep": hold}] * 3)]
            ids += [j.id for j in chaos.aslow.enqueue_many(conn, [{"seconds": hold}] * 2)]
            ids += [j.id for j in chaos.plain.enqueue_many(conn, [{"sleep": hold}] * 2)]
        fleet.spawn("--lease", "2", "--concurrency", "8", "--poll-interval", "0.2")
        wait_until(lambda: scalar(db, "SELECT count(*) FROM public.chaos_attempts")
                   == len(ids), 60, "every handler to start")
        samples = 0
        while scalar(db, "SELECT count(*) FROM pgjobs.jobs WHERE state = 'running'"):
            held = query(db, """
                SELECT application_name, state, backend_xmin, xact_start
                FROM pg_stat_activity
                WHERE datname = current_database() AND application_name LIKE 'pgjobs-%%'
                  AND pid <> pg_backend_pid()
                  AND (state LIKE 'idle in transaction%%'
                       OR (state = 'idle' AND backend_xmin IS NOT NULL))""")
            assert held == []
            samples += 1
            pause(0.2)
        assert samples >= 3
        wait_until(lambda: all_succeeded(db, ids), 60, "the jobs to finish")
        assert_exactly_once(db, ids[:3])
        assert scalar(db, "SELECT backend_xmin IS NOT NULL FROM pg_stat_activity "
                          "WHERE pid = %s", holder.info.backend_pid)  # still pinning
    finally:
        holder.close()
