"""The primary is killed and a real HA engine (pg_auto_failover, tests/hacluster.py)
promotes its synchronous secondary, twice, while producers enqueue and workers run jobs
through the multi-host DSN.

RELIABILITY.md row: "primary killed and a replica promoted by a real HA engine
(pg_auto_failover or Patroni), twice".

Only at full size (`make chaos`, `make failover`): a failover with pg_auto_failover's
default timeouts takes about fifty seconds, so the test takes about three minutes;
`make test` skips it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgjobs.ops import migrate as _migrate
from tests import hacluster
from tests.chaos.conftest import _fleet
from tests.chaos.harness import FULL, Fleet, assert_exactly_once, listeners, pause
from tests.helpers import query, scalar, wait_until
from tests.workerapps import failover

pytestmark = [
    pytest.mark.chaos, pytest.mark.xdist_group("failover"),
    pytest.mark.skipif(not FULL, reason="about three minutes (two failovers of about a "
                                        "minute each): runs in `make chaos` and "
                                        "`make failover`, not in `make test`"),
]

FAILOVER_APP = "workerapps.failover:app"
DBNAME = "pgjobs_failover"
WORKERS, ROUNDS = 2, 2
WORKER_ARGS = ("--lease", "10", "--poll-interval", "0.5", "--concurrency", "4")
# The jobs a final check covers: those enqueued up to job {last}, and every callback.
SETTLED = "(id <= {last} OR task = 'failover.callback')"
# Batches whose callbacks are not both enqueued yet (none of their jobs dies).
CALLBACKS_DUE = """
SELECT count(*) FROM pgjobs.batches b
WHERE (SELECT count(*) FROM pgjobs.jobs
       WHERE task = 'failover.callback' AND (meta->'batch'->>'id')::bigint = b.id) < 2
"""


def ha_binaries() -> None:
    """Skips the test when pg_auto_failover is missing, except under CI."""
    problem = hacluster.available()
    if problem is None:
        return
    reason = f"{problem} (run scripts/install-system-deps as root)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must install it before the tests")
    pytest.skip(reason)


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[hacluster.HACluster]:
    """A running cluster with a migrated database and the chaos harness; the failover
    app (in this process) points at it. Its logs are copied to ``tmp_path`` at the end."""
    ha_binaries()
    # Not under tmp_path: pytest's folders are private to this user, and the nodes may
    # run as postgres (HACluster gives them the folder).
    folder = Path(tempfile.mkdtemp(prefix="pgjobs-ha-"))
    ha = hacluster.HACluster(folder, DBNAME)
    try:
        dsn = ha.start()
        ha.create_database(DBNAME)
        _migrate.upgrade(dsn, "pgjobs")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(failover.HARNESS)
        monkeypatch.setenv("PGJOBS_DATABASE_URL", dsn)
        yield ha
    finally:
        failover.app.close()
        ha.stop()
        logs = tmp_path / "cluster-logs"
        logs.mkdir(exist_ok=True)
        for log in ha.folder.glob("*.log"):
            shutil.copy(log, logs / log.name)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def ha_fleet(cluster: hacluster.HACluster, request: pytest.FixtureRequest, tmp_path: Path
             ) -> Iterator[Fleet]:
    """Worker processes on the cluster's multi-host DSN (their logs are reported on
    failure, as the other chaos tests' are)."""
    workers = _fleet(request, tmp_path, cluster.dsn())
    yield workers
    workers.stop_all()


# -- producers ------------------------------------------------------------------------------


class Producer(threading.Thread):
    """Enqueues until stopped, riding out failures like an application would. Every
    enqueue whose commit returned is appended to a local file (the database is what
    fails); ids whose COMMIT raised are in doubt and go to a second file."""

    kind = ""

    def __init__(self, dsn: str, folder: Path, seed: float) -> None:
        super().__init__(daemon=True, name=f"producer-{self.kind}")
        self.dsn, self.rng = dsn, random.Random(seed)
        self.acked = folder / f"acked-{self.kind}.jsonl"
        self.doubtful = folder / f"in-doubt-{self.kind}.jsonl"
        self.errors = 0
        self.last_commit = 0.0
        self.halt = threading.Event()

    def run(self) -> None:
        with self.acked.open("a") as acked, self.doubtful.open("a") as doubtful:
            while not self.halt.is_set():
                try:
                    record = self.produce(doubtful)
                    acked.write(json.dumps(record) + "\n")
                    acked.flush()
                    self.last_commit = time.monotonic()
                except psycopg.Error:
                    self.errors += 1
                    self.halt.wait(0.2)
                self.halt.wait(self.rng.uniform(0.1, 0.3))

    def produce(self, doubtful: Any) -> dict[str, Any]:
        raise NotImplementedError

    def commit(self, conn: psycopg.Connection[Any], ids: list[int], doubtful: Any) -> None:
        try:
            conn.commit()
        except psycopg.OperationalError:
            doubtful.write(json.dumps({"ids": ids}) + "\n")
            doubtful.flush()
            raise

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.acked.read_text().splitlines()]

    def in_doubt(self) -> list[int]:
        return [i for line in self.doubtful.read_text().splitlines()
                for i in json.loads(line)["ids"]]


class Single(Producer):
    """One job per call, without a connection: the app's pool and its reliable push
    (retried across connection failures, never enqueued twice)."""

    kind = "single"

    def produce(self, doubtful: Any) -> dict[str, Any]:
        return {"ids": [failover.effect.enqueue(n=0).id]}


class Many(Producer):
    """``enqueue_many`` in a transaction of its own connection."""

    kind = "many"

    def produce(self, doubtful: Any) -> dict[str, Any]:
        with psycopg.connect(self.dsn) as conn:
            ids = [job.id for job in failover.effect.enqueue_many(
                conn, [{"n": i} for i in range(self.rng.randint(2, 10))])]
            self.commit(conn, ids, doubtful)
        return {"ids": ids}


class Batches(Producer):
    """A batch of jobs with complete and success callbacks, on its own connection."""

    kind = "batch"

    def produce(self, doubtful: Any) -> dict[str, Any]:
        with psycopg.connect(self.dsn) as conn:
            batch = failover.app.batch(conn)
            batch.on_complete(failover.callback, tag="complete")
            batch.on_success(failover.callback, tag="success")
            ids = [job.id for job in batch.enqueue_many(
                failover.effect, [{"n": i} for i in range(self.rng.randint(2, 8))])]
            self.commit(conn, ids, doubtful)
        return {"ids": ids, "batch": batch.id}


# -- measuring a failover ---------------------------------------------------------------


@dataclass
class Round:
    killed: str
    killed_at: float  # wall clock, compared with the database's (one machine)
    promoted: float = 0.0
    first_job: float = 0.0
    full_rate: float | None = None
    rejoined: float = 0.0
    rate_before: float = 0.0
    alone: str = ""  # synchronous_standby_names of the new primary before the rejoin

    def summary(self) -> str:
        return (f"{self.killed} killed: promoted after {self.promoted:.1f} s, first job "
                f"finished after {self.first_job:.1f} s, full throughput "
                f"({self.rate_before:.0f} jobs/s) after {self.full_rate} s; the old "
                f"primary rejoined as secondary {self.rejoined:.1f} s after its restart "
                f"(until then synchronous_standby_names was {self.alone!r})")


def effects_after(dsn: str, since: float) -> float | None:
    """Seconds from ``since`` to the first effect committed after it (None: none yet)."""
    at = scalar(dsn, "SELECT min(at) FROM public.chaos_effects WHERE at > to_timestamp(%s)",
                since)
    return None if at is None else at.timestamp() - since


def per_second(dsn: str, start: float, end: float) -> list[int]:
    """Effects committed in each whole second from ``start`` to ``end``."""
    rows = dict(query(dsn, """
        SELECT floor(extract(epoch FROM at) - %s)::int, count(*) FROM public.chaos_effects
        WHERE at >= to_timestamp(%s) AND at < to_timestamp(%s) GROUP BY 1""",
                      start, start, end))
    return [int(rows.get(s, 0)) for s in range(int(end - start))]


def fail_over(ha: hacluster.HACluster, dsn: str) -> Round:
    """Kill the primary, wait for the promotion and the first job after it, restart the
    old primary's keeper and wait until it is the secondary again."""
    old = ha.primary()
    assert old is not None and ha.healthy()
    before = time.time()
    pause(10)  # the steady rate this failover is measured against
    rate_before = statistics.median(per_second(dsn, before, time.time()))
    ha.crash(old)
    # Once every process of the node is dead: until then it may still commit.
    rnd = Round(old.name, time.time(), rate_before=rate_before)
    new = wait_until(lambda: (p := ha.primary()) is not None and p is not old and p, 300,
                     "the secondary's promotion")
    rnd.promoted = time.time() - rnd.killed_at
    rnd.alone = ha.synchronous_standby_names()
    rnd.first_job = wait_until(lambda: effects_after(dsn, rnd.killed_at), 120,
                               "a job to finish on the new primary")
    restarted = time.time()
    ha.run(old)
    ha.wait_healthy(300)
    rnd.rejoined = time.time() - restarted
    assert ha.primary() is new
    assert ha.synchronous_standby_names().startswith("ANY 1 ("), "replication is not sync"
    return rnd


def full_rate_after(dsn: str, rnd: Round, end: float) -> float | None:
    """Seconds from the kill to the end of the first whole second with at least the
    median rate of the ten seconds before it (None: never, before ``end``)."""
    counts = per_second(dsn, rnd.killed_at, end)
    return next((float(s + 1) for s, n in enumerate(counts)
                 if s + 1 >= rnd.first_job and n >= rnd.rate_before), None)


# -- the test ----------------------------------------------------------------------------------


@pytest.mark.timeout(900)
def test_two_failovers_lose_nothing_repeat_nothing_and_workers_resume_alone(
    cluster: hacluster.HACluster, ha_fleet: Fleet, rng: random.Random, tmp_path: Path
) -> None:
    """Producers enqueue single jobs, ``enqueue_many`` calls and batches with callbacks;
    workers run them and a one-second schedule. The primary is SIGKILLed twice and
    pg_auto_failover promotes the secondary. Every enqueue whose commit returned runs,
    every job's transactional effect happens exactly once, each batch's callbacks are
    enqueued once, every second has exactly one tick, and the workers (never restarted)
    run jobs after each failover."""
    ha, dsn = cluster, cluster.dsn()
    assert ha.synchronous_standby_names().startswith("ANY 1 (")
    assert scalar(dsn, "SHOW synchronous_commit") == "on"
    workers = [ha_fleet.spawn(*WORKER_ARGS, app=FAILOVER_APP) for _ in range(WORKERS)]
    wait_until(lambda: all(w.started() for w in workers), 60, "the workers to start")
    producers = [kind(dsn, tmp_path, rng.random()) for kind in (Single, Many, Batches)]
    for producer in producers:
        producer.start()
    rounds = []
    try:
        for _ in range(ROUNDS):
            rounds.append(fail_over(ha, dsn))
            last = time.monotonic()
            wait_until(lambda t=last: all(p.last_commit > t for p in producers), 60,
                       "every producer to commit again")
        pause(10)
    finally:
        for producer in producers:
            producer.halt.set()
        for producer in producers:
            producer.join(60)
    end = time.time()
    for rnd in rounds:
        rnd.full_rate = full_rate_after(dsn, rnd, end)

    # The schedule keeps ticking: check the jobs up to the last one enqueued by now, and
    # every batch callback (enqueued when its batch completes).
    checked = SETTLED.format(last=int(scalar(dsn, "SELECT max(id) FROM pgjobs.jobs")))
    wait_until(lambda: scalar(dsn, f"SELECT count(*) FROM pgjobs.jobs WHERE {checked} "
                                   "AND state <> 'succeeded'") == 0
               and scalar(dsn, CALLBACKS_DUE) == 0, 300, "every job to succeed")
    stored = {int(r[0]) for r in query(dsn, f"SELECT id FROM pgjobs.jobs WHERE {checked}")}
    records = [r for p in producers for r in p.records()]
    acked = [i for r in records for i in r["ids"]]
    assert len(acked) == len(set(acked))
    assert set(acked) <= stored, f"acknowledged jobs missing: {sorted(set(acked) - stored)}"
    assert_exactly_once(dsn, sorted(stored))  # jobs, callbacks and ticks alike

    # Each acknowledged batch's callbacks: enqueued once each, and run.
    batches = sorted(r["batch"] for r in records if "batch" in r)
    callbacks = query(dsn, """
        SELECT (meta->'batch'->>'id')::bigint, array_agg(args->>'tag' ORDER BY args->>'tag')
        FROM pgjobs.jobs WHERE task = 'failover.callback' GROUP BY 1 ORDER BY 1""")
    acked_callbacks = [(b, tags) for b, tags in callbacks if b in set(batches)]
    assert acked_callbacks == [(b, ["complete", "success"]) for b in batches]
    assert all(tags == ["complete", "success"] for _, tags in callbacks)

    # The schedule (catch_up="all"): one job for every second of the run, the failovers
    # included (caught up when a primary took writes again).
    ticks, last_tick = query(dsn, """
        SELECT array_agg((meta->>'tick')::timestamptz ORDER BY (meta->>'tick')::timestamptz),
               (SELECT last_tick FROM pgjobs.periodic WHERE name = 'failover_tick')
        FROM pgjobs.jobs WHERE meta->>'periodic' = 'failover_tick'""")[0]
    assert len(ticks) == len(set(ticks)), "a tick was enqueued twice"
    assert ticks == [ticks[0] + timedelta(seconds=i) for i in range(len(ticks))], "a gap"
    outage = [t for t in ticks if any(
        r.killed_at < t.timestamp() < r.killed_at + r.promoted for r in rounds)]
    assert outage, "no tick of the failover windows was caught up"
    assert last_tick == ticks[-1]  # read in the same snapshot

    # The same worker processes ran jobs after the last failover.
    assert all(w.alive() for w in workers), "a worker died"
    after_last = {int(pid) for (pid,) in query(
        dsn, "SELECT DISTINCT pid FROM public.chaos_effects WHERE at > to_timestamp(%s)",
        rounds[-1].killed_at + rounds[-1].first_job)}
    # Suspects (jobs reclaimed from the dead primary's leases) run in forked children.
    parents = {w.pid for w in workers}
    ran = {pid for pid in after_last if pid in parents}
    assert ran == parents, f"workers without a job after the last failover: {parents - ran}"
    wait_until(lambda: len(listeners(dsn)) == WORKERS, 60, "every worker to LISTEN again")

    doubtful = [i for p in producers for i in p.in_doubt()]
    # An id whose COMMIT failed may have been handed out again by the new primary (a
    # sequence advance that never reached it), so "found" is an upper bound.
    found = [i for i in doubtful if i in stored]
    print(f"\n{len(stored)} jobs ({len(acked)} acknowledged, {len(batches)} batches, "
          f"{len(ticks)} ticks, {len(outage)} caught up), in doubt: {len(doubtful)} "
          f"({len(found)} ids found), producer errors: "
          f"{ {p.kind: p.errors for p in producers} }, jobs recovered: "
          f"{scalar(dsn, 'SELECT count(*) FROM pgjobs.jobs WHERE recoveries > 0')}, "
          f"jobs that ran more than one attempt: "
          f"{scalar(dsn, 'SELECT count(*) FROM pgjobs.jobs WHERE attempt > 1')}")
    for i, rnd in enumerate(rounds, 1):
        print(f"failover {i}: {rnd.summary()}")
