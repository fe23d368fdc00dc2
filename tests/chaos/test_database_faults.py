"""PostgreSQL itself fails: `pg_ctl restart -m immediate` (a crash and recovery) and
pg_terminate_backend, on a server of the test's own.

RELIABILITY.md row: "PostgreSQL restarted under load, backends terminated".
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable

import psycopg
import pytest

from tests.chaos.conftest import PrivateServer
from tests.chaos.harness import Fleet, assert_exactly_once, listeners, pause, scale, states
from tests.helpers import query, scalar, wait_until
from tests.workerapps import chaos

pytestmark = [pytest.mark.chaos, pytest.mark.xdist_group("chaos")]


def accepting(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


class Enqueuer(threading.Thread):
    """Enqueues effect jobs until stopped, through the app's pool or on connections of
    its own (committing every few jobs), riding out failures like an application would.
    Only ids whose commit returned count as committed."""

    def __init__(self, dsn: str, via_pool: bool, seed: float) -> None:
        super().__init__(daemon=True)
        self.dsn, self.via_pool, self.rng = dsn, via_pool, random.Random(seed)
        self.committed: list[int] = []
        self.errors = 0
        self.last_commit = 0.0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                if self.via_pool:
                    self.committed.append(chaos.effect.enqueue(sleep=0.01).id)
                else:
                    with psycopg.connect(self.dsn, connect_timeout=5) as conn:
                        ids = [chaos.effect.enqueue(conn, sleep=0.01).id
                               for _ in range(self.rng.randint(1, 4))]
                    self.committed += ids  # the `with` block committed them
                self.last_commit = time.monotonic()
            except psycopg.Error:
                self.errors += 1
                self.halt.wait(0.1)
            self.halt.wait(self.rng.uniform(0.01, 0.05))


@pytest.mark.timeout(scale(180, 900))
def test_restarts_and_terminated_backends_under_load_lose_and_repeat_nothing(
    private_server: PrivateServer, private_db: str, private_fleet: Fleet, rng: random.Random
) -> None:
    """Workers and enqueuers run while the server is crashed and restarted and every
    backend of the database is terminated, in random order. Workers survive and
    reconnect, LISTEN is re-established, every committed job completes exactly once."""
    dsn = private_db
    size, chaos_for = scale(2, 4), scale(14.0, 120.0)
    workers = [private_fleet.spawn("--lease", "3", "--poll-interval", "0.5", "--concurrency", "4")
               for _ in range(size)]
    wait_until(lambda: len(listeners(dsn)) == size, 60, "the workers to listen")
    enqueuers = [Enqueuer(dsn, via_pool=i % 2 == 0, seed=rng.random()) for i in range(2)]
    for e in enqueuers:
        e.start()
    faults: list[str] = []
    started = time.monotonic()
    while time.monotonic() - started < chaos_for:
        pause(rng.uniform(1.5, 3.5))
        fault = rng.choice(["restart", "terminate"])
        if fault == "restart":
            private_server.restart()
        else:
            private_server.terminate(dsn)
        faults.append(fault)
        wait_until(lambda: accepting(dsn), 60, "the server to accept connections")
    last_fault = time.monotonic()
    wait_until(lambda: all(e.last_commit > last_fault for e in enqueuers), 60,
               "both enqueuers to commit again after the last fault")
    for e in enqueuers:
        e.halt.set()
        e.join(30)
    committed = [i for e in enqueuers for i in e.committed]
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM pgjobs.jobs WHERE state <> "
                                   "'succeeded'") == 0, scale(120, 400),
               "every committed job to succeed")
    stored = [int(r[0]) for r in query(dsn, "SELECT id FROM pgjobs.jobs")]
    assert set(committed) <= set(stored), "a job whose commit returned is missing"
    assert_exactly_once(dsn, stored)
    assert all(w.alive() for w in workers), "a worker died"
    wait_until(lambda: len(listeners(dsn)) == size, 60, "every worker to LISTEN again")
    print(f"{len(stored)} jobs ({len(committed)} acknowledged), faults: {faults}, "
          f"enqueue errors: {[e.errors for e in enqueuers]}, "
          f"runs: {scalar(dsn, 'SELECT count(*) FROM public.chaos_attempts')}")


@pytest.mark.timeout(scale(120, 300))
def test_listen_is_reestablished_after_each_kind_of_connection_loss(
    private_server: PrivateServer, private_db: str, private_fleet: Fleet
) -> None:
    """A worker that polls only every 10 minutes must still run a new job at once
    after its LISTEN connection was terminated, all its connections were, and the
    server restarted: only a notification (or the wake-up after re-LISTEN) can start it
    within this test's timeouts."""
    dsn = private_db
    worker = private_fleet.spawn("--poll-interval", "600", "--lease", "5")
    wait_until(lambda: len(listeners(dsn)) == 1, 60, "the worker to listen")
    faults: dict[str, Callable[[], object]] = {
        "listen connection terminated":
            lambda: private_server.terminate(dsn, "pgjobs-listen"),
        "every pgjobs connection terminated": lambda: private_server.terminate(dsn, "pgjobs-%"),
        "server restarted": private_server.restart,
    }
    for name, fault in faults.items():
        before = listeners(dsn)
        fault()
        wait_until(lambda b=before: (now := listeners(dsn)) and now != b, 60,
                   f"a new LISTEN after: {name}")
        with psycopg.connect(dsn) as conn:
            job_id = chaos.effect.enqueue(conn).id
        wait_until(lambda j=job_id: states(dsn, [j]) == {"succeeded": 1}, 60,
                   f"the notified job to run after: {name}")
    assert worker.alive()
    assert_exactly_once(dsn, [int(r[0]) for r in query(dsn, "SELECT id FROM pgjobs.jobs")])


@pytest.mark.timeout(scale(60, 120))
def test_enqueue_through_the_app_pools_works_as_soon_as_the_server_is_back(
    private_server: PrivateServer, private_db: str
) -> None:
    """The app's own pools hold connections across a restart or a terminated backend;
    the first enqueue after the server is back must not get a dead one."""
    dsn = private_db

    async def scenario() -> None:
        await asyncio.to_thread(chaos.plain.enqueue)
        await chaos.plain.enqueue_async()
        for fault in ("restart", "terminate", "restart"):
            if fault == "restart":
                await asyncio.to_thread(private_server.restart)
            else:
                await asyncio.to_thread(private_server.terminate, dsn)
            await asyncio.to_thread(wait_until, lambda: accepting(dsn), 60, "the server")
            await asyncio.to_thread(chaos.plain.enqueue)
            await chaos.plain.enqueue_async()
        await chaos.app.aclose()

    asyncio.run(scenario())
    assert states(dsn) == {"available": 8}
