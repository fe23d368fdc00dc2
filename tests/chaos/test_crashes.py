"""Workers that die: at named failpoints, by random SIGKILLs, by a poison job, and by
SIGTERM followed (or not) by SIGKILL.

RELIABILITY.md rows: "crash at each failpoint", "5,000 jobs, 4-8 workers, a random worker
SIGKILLed every ~200 ms", "poison job that kills the process each time", "SIGTERM with
jobs that finish in time, honour cancellation, or ignore it; SIGKILL after the grace
period".
"""

from __future__ import annotations

import random
import signal
import time
from datetime import timedelta

import psycopg
import pytest

from tests.chaos.harness import (
    Fleet,
    all_succeeded,
    assert_exactly_once,
    never_ran_after_finishing,
    pause,
    scale,
    states,
)
from tests.helpers import query, scalar, wait_until
from tests.workerapps import chaos

# Its own xdist group: `make test` runs it beside the other chaos tests.
pytestmark = [pytest.mark.chaos, pytest.mark.xdist_group("chaos-crashes")]

FAILPOINTS = [
    "before_claim", "after_claim_commit", "mid_handler", "after_handler",
    "before_complete_commit", "after_complete_commit",
]


def enqueue_mix(dsn: str, rng: random.Random, n: int) -> tuple[list[int], list[int]]:
    """``n`` jobs, half with a transactional effect, half plain; returns both id lists."""
    with psycopg.connect(dsn) as conn:
        effect = chaos.effect.enqueue_many(
            conn, [{"sleep": rng.uniform(0, 0.02)} for _ in range(n // 2)])
        plain = chaos.plain.enqueue_many(
            conn, [{"sleep": rng.uniform(0, 0.02)} for _ in range(n - n // 2)])
    return [j.id for j in effect], [j.id for j in plain]


@pytest.mark.parametrize("point", FAILPOINTS)
@pytest.mark.timeout(scale(120, 600))
def test_a_crash_at_each_failpoint_loses_nothing_and_repeats_nothing_finished(
    db: str, fleet: Fleet, rng: random.Random, point: str
) -> None:
    """Workers die (os._exit, no cleanup) at the N-th hit of ``point``; a clean worker
    finishes. Each job succeeds once, effects exactly once, ``attempt`` is 1 on every
    run (a lost claim is refunded, so it rises once per real claim), and no job runs again
    after it finished."""
    n, rounds = scale(24, 400), scale(2, 6)
    effect_ids, plain_ids = enqueue_mix(db, rng, n)
    ids = effect_ids + plain_ids
    args = ["--lease", "1.5", "--poll-interval", "0.2", "--concurrency", "4"]
    crashes = 0
    for round_ in range(rounds):
        nth = 1 if round_ == 0 else rng.randint(1, 8)
        worker = fleet.spawn(*args, env={"PGJOBS_FAILPOINTS": f"{point}=exit@{nth}"})
        wait_until(lambda w=worker: not w.alive() or all_succeeded(db, ids), 90,
                   f"the worker to crash at {point} or the jobs to finish")
        if worker.alive():
            worker.kill()  # every job finished before the N-th hit
        else:
            assert worker.returncode == 137, worker.log()  # the failpoint's exit
            crashes += 1
    assert crashes >= 1  # the first round crashes at the first hit
    fleet.spawn(*args)
    wait_until(lambda: all_succeeded(db, ids), scale(60, 300), "every job to succeed")
    assert_exactly_once(db, effect_ids)
    assert states(db, plain_ids) == {"succeeded": len(plain_ids)}
    assert query(db, "SELECT DISTINCT attempt FROM public.chaos_attempts") == [(1,)]
    assert query(db, "SELECT DISTINCT attempt FROM pgjobs.jobs") == [(1,)]
    assert never_ran_after_finishing(db) == []
    runs = scalar(db, "SELECT count(*) FROM public.chaos_attempts")
    print(f"{point}: {n} jobs, {crashes} crashes, {runs} runs, recoveries "
          f"{scalar(db, 'SELECT sum(recoveries) FROM pgjobs.jobs')}")


@pytest.mark.timeout(scale(180, 1200))
def test_random_sigkills_with_respawn_lose_nothing_and_run_effects_once(
    db: str, fleet: Fleet, rng: random.Random
) -> None:
    """A supervisor (this test) SIGKILLs a random started worker every ~period and
    starts a replacement. The recovery budget is raised: these are the kills' innocent
    victims, not poison jobs (that row has its own test)."""
    n, size, period = scale(300, 5000), scale(3, 6), scale(0.3, 0.2)
    kill_for = scale(20.0, 240.0)
    with psycopg.connect(db) as conn:
        ids = [j.id for j in chaos.effect.enqueue_many(
            conn, [{"sleep": rng.uniform(0, 0.05)} for _ in range(n)])]
    args = ["--lease", "2", "--poll-interval", "0.2", "--concurrency", "5",
            "--recovery-budget", "1000"]
    for _ in range(size):
        fleet.spawn(*args)
    kills, started = 0, time.monotonic()
    while not all_succeeded(db, ids) and time.monotonic() - started < kill_for:
        pause(rng.uniform(0.5, 1.5) * period)
        victims = [w for w in fleet.alive() if w.started()]
        if not victims:
            continue
        rng.choice(victims).signal(signal.SIGKILL)
        kills += 1
        fleet.spawn(*args)
    wait_until(lambda: all_succeeded(db, ids), scale(120, 600), "every job to succeed")
    assert_exactly_once(db, ids)
    assert all(w.returncode in (None, -signal.SIGKILL) for w in fleet.workers)
    runs = scalar(db, "SELECT count(*) FROM public.chaos_attempts")
    recoveries = scalar(db, "SELECT sum(recoveries) FROM pgjobs.jobs")
    print(f"{n} jobs, {size} workers, {kills} SIGKILLs in {time.monotonic() - started:.0f} s, "
          f"{runs} runs, {recoveries} recoveries")


@pytest.mark.timeout(scale(180, 600))
@pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "in-process"])
def test_a_poison_job_dies_after_the_recovery_budget_and_others_keep_flowing(
    db: str, fleet: Fleet, rng: random.Random, isolate: bool
) -> None:
    """The poison job kills the worker that runs it; the supervisor respawns them. It
    ends dead by "worker lost" after the budget although max_attempts is 1 (recoveries
    are not attempts), and every other job succeeds. Isolated (the default), only its
    first run kills a worker: once a suspect, it runs in processes of its own, whose
    deaths the worker records at once; in-process, it kills a worker every time."""
    budget, n = scale(1, 3), scale(60, 600)
    with psycopg.connect(db) as conn:
        poison = chaos.poison.enqueue(conn).id
        ids = [j.id for j in chaos.effect.enqueue_many(
            conn, [{"sleep": rng.uniform(0, 0.05)} for _ in range(n)])]
    args = ["--lease", "1.5", "--poll-interval", "0.2", "--concurrency", "4",
            "--recovery-budget", str(budget),
            "--isolate-suspects" if isolate else "--no-isolate-suspects"]
    for _ in range(2):
        fleet.spawn(*args)

    def supervise() -> bool:
        for worker in fleet.workers:
            if worker.returncode is not None and not getattr(worker, "replaced", False):
                assert worker.returncode == 77, worker.log()  # only the poison kills
                worker.replaced = True  # type: ignore[attr-defined]
                fleet.spawn(*args)
        return (scalar(db, "SELECT state FROM pgjobs.jobs WHERE id = %s", poison) == "dead"
                and all_succeeded(db, ids))

    wait_until(supervise, scale(120, 400), "the poison job to die and the others to succeed")
    assert_exactly_once(db, ids)
    row = query(db, "SELECT attempt, recoveries, errors FROM pgjobs.jobs WHERE id = %s",
                poison)[0]
    attempt, recoveries, errors = row
    assert (attempt, recoveries) == (0, budget + 1)
    assert [e["type"] for e in errors] == ["pgjobs.WorkerLost"] * (budget + 1)
    assert errors[-1]["message"].startswith("worker lost")
    assert f"recovery budget of {budget} exhausted" in errors[-1]["message"]
    assert scalar(db, "SELECT count(*) FROM public.chaos_attempts WHERE job_id = %s",
                  poison) == budget + 1
    crashed = sum(1 for w in fleet.workers if w.returncode == 77)
    alone = [e["message"] for e in errors if "a process of its own" in e["message"]
             or "the process running it alone" in e["message"]]
    assert crashed == (1 if isolate else budget + 1)
    assert len(alone) == (budget if isolate else 0), errors
    others = scalar(db, "SELECT sum(recoveries) FROM pgjobs.jobs WHERE id <> %s", poison)
    print(f"poison: budget {budget}, {crashed} workers killed, {n} other jobs, "
          f"their recoveries: {others}")


@pytest.mark.xdist_group("chaos")  # balances the two groups under `make test`
@pytest.mark.timeout(scale(120, 300))
def test_sigterm_finishes_releases_or_abandons_jobs_and_claims_nothing_more(
    db: str, fleet: Fleet
) -> None:
    """One worker gets SIGTERM with a 2 s grace: jobs that finish in time succeed; jobs
    that honour cancellation or ignore it are released without losing an attempt; jobs
    enqueued after SIGTERM are not claimed. Another gets SIGTERM and then, as an
    orchestrator does after its grace period, SIGKILL: its jobs are reclaimed by lease
    and run once elsewhere."""
    term = "term"
    with psycopg.connect(db) as conn:
        finish = [chaos.obedient.options(queue=term).enqueue(conn, seconds=1.0).id
                  for _ in range(2)]
        honour = [chaos.obedient.options(queue=term).enqueue(conn, seconds=600).id,
                  chaos.aobedient.options(queue=term).enqueue(conn, seconds=600).id]
        ignore = [chaos.stubborn.options(queue=term).enqueue(conn, seconds=30).id
                  for _ in range(2)]
    started = finish + honour + ignore
    worker = fleet.spawn("--queues", term, "--concurrency", "8", "--lease", "2",
                         "--shutdown-timeout", "2", "--poll-interval", "0.2")
    wait_until(lambda: scalar(db, "SELECT count(DISTINCT job_id) FROM public.chaos_attempts")
               == len(started), 60, "every job to start")
    worker.signal(signal.SIGTERM)
    wait_until(lambda: scalar(db, "SELECT state FROM pgjobs.workers WHERE pid = %s",
                              worker.pid) == "stopping", 30, "the worker to start stopping")
    with psycopg.connect(db) as conn:
        late = [chaos.plain.options(queue=term).enqueue(conn).id for _ in range(3)]
    assert worker.wait(60) == 0, worker.log()
    assert states(db, finish) == {"succeeded": 2}
    for job_id in honour + ignore + late:
        row = query(db, "SELECT state, attempt, lease_token FROM pgjobs.jobs WHERE id = %s",
                    job_id)
        assert row == [("available", 0, None)], (job_id, row)
    assert scalar(db, "SELECT count(*) FROM public.chaos_attempts WHERE job_id = ANY(%s)",
                  late) == 0
    assert scalar(db, "SELECT count(*) FROM public.chaos_effects") == 0  # stubborn: fenced
    assert ("cancelled",) in query(db, "SELECT note FROM public.chaos_notes WHERE job_id = %s",
                                   honour[1])
    assert query(db, "SELECT state FROM pgjobs.workers WHERE pid = %s", worker.pid) == [
        ("stopped",)]

    kill = "kill"
    with psycopg.connect(db) as conn:
        abandoned = [chaos.stall.options(queue=kill).enqueue(conn).id,
                     chaos.astall.options(queue=kill).enqueue(conn).id]
    second = fleet.spawn("--queues", kill, "--lease", "2", "--shutdown-timeout", "600",
                         "--poll-interval", "0.2")
    wait_until(lambda: scalar(db, "SELECT count(*) FROM public.chaos_attempts WHERE "
                                  "job_id = ANY(%s)", abandoned) == 2, 60, "both to start")
    second.signal(signal.SIGTERM)
    wait_until(lambda: scalar(db, "SELECT state FROM pgjobs.workers WHERE pid = %s",
                              second.pid) == "stopping", 30, "the worker to start stopping")
    with psycopg.connect(db) as conn:
        after = [chaos.effect.options(queue=kill).enqueue(conn).id]
    second.signal(signal.SIGKILL)  # the orchestrator's grace period is over
    second.wait(30)
    assert states(db, abandoned) == {"running": 2}
    assert scalar(db, "SELECT count(*) FROM public.chaos_attempts WHERE job_id = ANY(%s)",
                  after) == 0
    fleet.spawn("--queues", kill, "--lease", "2", "--poll-interval", "0.2")
    wait_until(lambda: all_succeeded(db, abandoned + after), 60, "the abandoned jobs to rerun")
    assert_exactly_once(db, abandoned + after)
    assert query(db, "SELECT DISTINCT attempt, recoveries FROM pgjobs.jobs WHERE id = ANY(%s)",
                 abandoned) == [(1, 1)]


@pytest.mark.parametrize("statement", ["job_claim", "job_claim_limited"])
def test_a_claim_takes_one_suspect_and_none_beside_a_running_one(db: str, statement: str
                                                                 ) -> None:
    """The claim side of the poison row, step by step: recovered jobs ("suspects") are
    claimed one per claim, and not at all by a worker that already runs one. Both claim
    statements: the limited one also runs once a second as a sweep."""
    with psycopg.connect(db) as conn:
        ids = [j.id for j in chaos.plain.enqueue_many(conn, [{}] * 6)]
        worker = int(conn.execute("INSERT INTO pgjobs.workers (host, pid, queues, concurrency)"
                                  " VALUES ('h', 1, '{default}', 10) RETURNING id").fetchone()[0])
    query(db, "UPDATE pgjobs.jobs SET recoveries = 1 WHERE id = ANY(%s)", ids[:3])

    def claim_for(worker_id: int | None, limit: int = 10) -> list[int]:
        with psycopg.connect(db, autocommit=True) as c:
            rows = c.execute(getattr(chaos.app.queries, statement), {
                "queues": ["default"], "limit": limit, "lease": timedelta(seconds=60),
                "worker_id": worker_id}).fetchall()
        return sorted(int(r[0]) for r in rows)

    assert claim_for(worker) == [ids[0], *ids[3:]]  # one suspect, every fresh job
    assert claim_for(worker) == []                  # it runs a suspect: no second one
    assert claim_for(None) == [ids[1]]              # another claimer may take one
    query(db, "UPDATE pgjobs.jobs SET state = 'succeeded', lease_token = NULL, "
              "lease_expires_at = NULL WHERE id = %s", ids[0])
    assert claim_for(worker) == [ids[2]]            # its suspect finished: the next one

    # A worker that runs each suspect in a process of its own takes any number of them,
    # also while it runs some.
    query(db, "UPDATE pgjobs.jobs SET state = 'available', lease_token = NULL, "
              "lease_expires_at = NULL, worker_id = NULL, recoveries = 1")
    isolating = int(scalar(db, "INSERT INTO pgjobs.workers (host, pid, queues, concurrency, "
                               "meta) VALUES ('h', 2, '{default}', 10, "
                               "'{\"isolates_suspects\": true}') RETURNING id"))
    assert claim_for(isolating, limit=2) == ids[:2]
    assert claim_for(isolating) == ids[2:]


@pytest.mark.timeout(scale(120, 300))
def test_innocent_jobs_of_a_poison_crash_run_at_once_each_in_a_process_of_its_own(
    db: str, fleet: Fleet
) -> None:
    """RELIABILITY.md: "a poison job crashes a worker that holds innocent jobs". One
    worker holds 16 jobs, one of which kills its process. Recovered, they are suspects: the
    worker that picks them up runs each in a new process of its own, so the poison job
    kills only its own processes (it ends dead after the budget, the worker lives on) and
    the 15 innocent ones run side by side, once each. In-process (one suspect at a time),
    the poison job would kill the second worker too, and nothing would run any more."""
    budget = 2
    with psycopg.connect(db) as conn:
        ids = [j.id for j in chaos.stall.enqueue_many(conn, [{"first": 600}] * 7)]
        poison = chaos.poison.enqueue(conn).id
        ids += [j.id for j in chaos.stall.enqueue_many(conn, [{"first": 600}] * 8)]
    args = ["--lease", "2", "--poll-interval", "0.2", "--recovery-budget", str(budget)]
    victim = fleet.spawn("--concurrency", "16", *args)
    wait_until(lambda: victim.returncode is not None, 60, "the poison job to kill its worker")
    assert victim.returncode == 77, victim.log()
    # It claimed all 16 at once (16 free slots); nobody else is there to reclaim them.
    assert scalar(db, "SELECT count(*) FROM pgjobs.jobs WHERE state = 'running'") == 16
    survivor = fleet.spawn("--concurrency", "16", *args)
    wait_until(lambda: all_succeeded(db, ids) or survivor.returncode is not None, 90,
               "the innocent jobs to succeed")
    assert survivor.alive(), f"the poison job killed the second worker too:\n{survivor.log()}"
    wait_until(lambda: scalar(db, "SELECT state FROM pgjobs.jobs WHERE id = %s", poison)
               == "dead", 30, "the poison job to die")
    assert_exactly_once(db, ids)
    # Each innocent job was recovered once (the first crash) and ran once more, alone.
    assert query(db, "SELECT DISTINCT recoveries FROM pgjobs.jobs WHERE id = ANY(%s)",
                 ids) == [(1,)]
    # ... each in a process of its own (none of them in the worker's).
    pids = scalar(db, "SELECT count(DISTINCT pid) FROM public.chaos_attempts "
                      "WHERE recoveries > 0 AND job_id = ANY(%s)", ids)
    assert pids == scalar(db, "SELECT count(*) FROM public.chaos_attempts "
                              "WHERE recoveries > 0 AND job_id = ANY(%s)", ids)
    errors = scalar(db, "SELECT errors FROM pgjobs.jobs WHERE id = %s", poison)
    assert [e["type"] for e in errors] == ["pgjobs.WorkerLost"] * (budget + 1)
    assert "lease expired" in errors[0]["message"]
    assert all("the process running it alone exited with status 77" in e["message"]
               for e in errors[1:]), errors


@pytest.mark.timeout(scale(120, 300))
def test_idle_and_busy_workers_still_reclaim_a_killed_workers_jobs_on_time(
    db: str, fleet: Fleet
) -> None:
    """Reclaiming is the survivors' job whether they are idle (here polling only every
    10 minutes) or have no free slot: within a few leases, not at their next claim."""
    survivor = fleet.spawn("--lease", "2", "--poll-interval", "600", "--concurrency", "1")
    wait_until(survivor.started, 60, "the surviving worker to start")
    for busy in (False, True):
        if busy:
            with psycopg.connect(db) as conn:
                hog = chaos.stall.enqueue(conn, first=600).id  # takes its only slot
            wait_until(lambda h=hog: scalar(db, "SELECT count(*) FROM public.chaos_attempts "
                                                "WHERE job_id = %s", h) == 1, 60, "the hog")
        victim = fleet.spawn("--lease", "2", "--queues", "victim")
        with psycopg.connect(db) as conn:
            job_id = chaos.effect.options(queue="victim").enqueue(conn, sleep=600).id
        wait_until(lambda j=job_id: scalar(db, "SELECT count(*) FROM public.chaos_attempts "
                                               "WHERE job_id = %s", j) == 1, 60, "the victim")
        victim.signal(signal.SIGKILL)
        wait_until(lambda j=job_id: query(db, "SELECT state, recoveries FROM pgjobs.jobs "
                                              "WHERE id = %s", j) == [("available", 1)],
                   60, f"the {'busy' if busy else 'idle'} worker to reclaim the job")
    assert survivor.alive()


def _gone(pid: int) -> bool:
    """The process has exited (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.timeout(scale(90, 180))
def test_a_killed_workers_isolated_suspects_die_with_it(db: str, fleet: Fleet) -> None:
    """A worker runs a suspect in a process the fork server forked, not the worker, so
    the kernel does not end it with the worker. When the worker is SIGKILLed, that
    process (and the fork server) must exit too, not run on unseen while the job is
    reclaimed and run elsewhere."""
    with psycopg.connect(db) as conn:
        job_id = chaos.stubborn.enqueue(conn, seconds=600).id
        conn.execute("UPDATE pgjobs.jobs SET recoveries = 1 WHERE id = %s", (job_id,))
    worker = fleet.spawn("--lease", "30", "--poll-interval", "0.2")
    child = wait_until(lambda: scalar(db, "SELECT pid FROM public.chaos_attempts "
                                          "WHERE job_id = %s", job_id), 60,
                       "the suspect to start in a process of its own")
    assert child != worker.pid and not _gone(child)
    worker.signal(signal.SIGKILL)
    wait_until(lambda: _gone(child), 15, "the suspect's process to exit with its worker")
