"""A network black hole between one worker and PostgreSQL, through tests/chaos/proxy.py.

RELIABILITY.md row: "network black hole between one worker and the database": its jobs
are reclaimed and run once elsewhere; it stops side effects when its lease window
lapses; it recovers when the link heals.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import psycopg
import pytest

from tests.chaos.harness import Fleet, Worker, all_succeeded, assert_exactly_once, pause, scale
from tests.chaos.proxy import Proxy
from tests.helpers import query, scalar, wait_until
from tests.workerapps import chaos

pytestmark = [pytest.mark.chaos, pytest.mark.xdist_group("chaos")]

ARGS = ["--lease", "2", "--poll-interval", "0.2"]


@pytest.fixture
def proxy(db: str) -> Iterator[Proxy]:
    link = Proxy.to(db).start()
    yield link
    link.close()


def runs_by(dsn: str, worker: Worker, ids: list[int]) -> int:
    return int(scalar(dsn, "SELECT count(*) FROM public.chaos_attempts WHERE pid = %s "
                           "AND job_id = ANY(%s)", worker.pid, ids))


def recovers(dsn: str, cut: Worker, other: Worker) -> list[int]:
    """With the other worker gone, the healed worker runs new jobs."""
    other.signal(signal.SIGTERM)
    assert other.wait(30) == 0
    with psycopg.connect(dsn) as conn:
        fresh = [chaos.effect.enqueue(conn).id for _ in range(3)]
    wait_until(lambda: all_succeeded(dsn, fresh), 60, "the healed worker to run new jobs")
    assert query(dsn, "SELECT DISTINCT pid FROM public.chaos_effects WHERE job_id = ANY(%s)",
                 fresh) == [(cut.pid,)]
    return fresh


@pytest.mark.parametrize("heal", ["resume", "reset"])
@pytest.mark.timeout(scale(120, 300))
def test_a_partitioned_worker_stops_its_jobs_which_run_once_elsewhere_and_it_recovers(
    db: str, fleet: Fleet, proxy: Proxy, heal: str
) -> None:
    """Every byte between the worker and PostgreSQL is held (its queries hang, nothing
    errors). By the end of its lease window it tells its handlers to stop, although its
    heartbeat never returns; another worker reclaims and runs the jobs once. The link
    heals by delivering what was held (``resume``) or by resetting every connection
    (``reset``, as after a partition longer than TCP's timeouts)."""
    cut = fleet.spawn(*ARGS, dsn=proxy.dsn(db))
    with psycopg.connect(db) as conn:
        ids = [chaos.stall.enqueue(conn, first=600).id, chaos.astall.enqueue(conn, first=600).id]
    wait_until(lambda: runs_by(db, cut, ids) == 2, 60, "both jobs to start on the cut worker")
    proxy.blackhole()
    other = fleet.spawn(*ARGS)
    wait_until(lambda: all_succeeded(db, ids), 60, "the other worker to run the jobs")
    for job_id in ids:  # still partitioned: the cut worker gave up on its own
        wait_until(lambda j=job_id: f"job {j} lost its lease" in cut.log(), 30,
                   f"the cut worker to stop job {job_id} while partitioned")
    if heal == "reset":
        proxy.reset()
    proxy.heal()
    wait_until(lambda: len(query(db, "SELECT 1 FROM public.chaos_notes WHERE pid = %s",
                                 cut.pid)) == 3, 60, "the cut handlers' notes")
    notes = sorted(query(db, "SELECT job_id, note FROM public.chaos_notes WHERE pid = %s",
                         cut.pid))
    assert notes == sorted([(ids[0], "stopped=True lease_lost=True"), (ids[0], "LeaseLost"),
                            (ids[1], "cancelled lease_lost=True")])
    # Run by the other worker: recovered, they are suspects, which it runs each in a
    # process of its own (worker/isolated.py), never in the cut one.
    effect_pids = {pid for (pid,) in query(
        db, "SELECT pid FROM public.chaos_effects WHERE job_id = ANY(%s)", ids)}
    assert len(effect_pids) == 2 and not effect_pids & {cut.pid, other.pid}
    fresh = recovers(db, cut, other)
    assert_exactly_once(db, ids + fresh)
    assert query(db, "SELECT DISTINCT attempt, recoveries FROM pgjobs.jobs WHERE id = ANY(%s)",
                 ids) == [(1, 1)]
    assert cut.alive()


CLAIMED_SINCE_LISTENING = """
SELECT c.query_start FROM pg_stat_activity c JOIN pg_stat_activity l USING (datname)
WHERE c.datname = current_database() AND c.application_name = 'pgjobs-claim'
  AND l.application_name = 'pgjobs-listen' AND l.query LIKE 'LISTEN%%'
  AND c.state = 'idle' AND c.query_start > l.state_change
"""


@pytest.mark.timeout(scale(120, 300))
def test_a_claim_whose_reply_comes_back_after_the_lease_is_not_run(
    db: str, fleet: Fleet, proxy: Proxy
) -> None:
    """Only the replies on the worker's claim connection are held: its claim commits in
    PostgreSQL (the jobs are running in its name) but it learns of them only after their
    lease is over and another worker ran them. It must not start them then."""
    # It claims only when notified: no polls, no reclaims of its own (a reclaim stuck
    # behind the held replies would keep its claim from being sent at all).
    cut = fleet.spawn("--lease", "2", "--poll-interval", "600", "--reclaim-interval", "600",
                      dsn=proxy.dsn(db))
    # Listening, and done with the claims that listening triggers (idle since the last,
    # twice in a row): a claim still awaiting its reply when the replies are held would
    # keep the claim of the jobs from being sent.
    def settled() -> bool:
        last = scalar(db, CLAIMED_SINCE_LISTENING)
        pause(0.3)
        return last is not None and scalar(db, CLAIMED_SINCE_LISTENING) == last

    wait_until(lambda: cut.started() and settled(), 60,
               "the cut worker to listen, then claim and go idle")
    worker_id = cut.worker_id(db)
    proxy.blackhole("down", app="pgjobs-claim")
    with psycopg.connect(db) as conn:  # the notification wakes it; its claim is held
        late = [chaos.effect.enqueue(conn).id for _ in range(2)]
    wait_until(lambda: scalar(db, "SELECT count(*) FROM pgjobs.jobs WHERE id = ANY(%s) AND "
                                  "state = 'running' AND worker_id = %s", late, worker_id) == 2,
               60, "the cut worker's claim to take the jobs")
    other = fleet.spawn(*ARGS)
    wait_until(lambda: all_succeeded(db, late), 60, "the other worker to reclaim and run them")
    proxy.heal()
    fresh = recovers(db, cut, other)  # its claim loop is past the late reply by now
    assert runs_by(db, cut, late) == 0, "the cut worker ran jobs whose lease was over"
    assert_exactly_once(db, late + fresh)
    assert cut.alive()
