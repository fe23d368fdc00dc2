"""Periodic jobs against a real PostgreSQL: the catch-up policies, racing enqueuers and
the schedule table, in-process. Exactly-once ticks across stalled worker subprocesses are
in tests/chaos/test_cron_ticks.py."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

import pgjobs
from pgjobs.ops.cli import cli
from pgjobs.worker.maintenance.periodic import PeriodicEnqueuer
from tests.helpers import WorkerProcess, query, scalar, wait_until

pytestmark = pytest.mark.xdist_group("periodic")

def new_app(dsn: str) -> tuple[pgjobs.App, pgjobs.Task[..., Any]]:
    app = pgjobs.App(dsn=dsn)

    @app.job(name="report", queue="reports")
    def report(day: str = "") -> None:
        pass

    return app, report


def step(app: pgjobs.App, action: Callable[[PeriodicEnqueuer, Any], Any]) -> Any:
    """Run ``action(enqueuer, conn)`` on an async connection of the app's database."""

    async def run() -> Any:
        async with await psycopg.AsyncConnection.connect(app.dsn, autocommit=True) as conn:
            return await action(PeriodicEnqueuer(app), conn)

    return asyncio.run(run())


def sync(app: pgjobs.App) -> list[str]:
    return step(app, lambda e, c: e.sync(c))  # type: ignore[no-any-return]


def tick(app: pgjobs.App) -> list[int]:
    return step(app, lambda e, c: e.run_once(c))  # type: ignore[no-any-return]


def tick_jobs(dsn: str) -> list[tuple[datetime, str, str]]:
    rows = query(dsn, "SELECT (meta->>'tick')::timestamptz, meta->>'periodic', task "
                      "FROM pgjobs.jobs ORDER BY id")
    return [(t, name, task) for t, name, task in rows]


def last_tick(dsn: str, name: str) -> datetime:
    return scalar(dsn, "SELECT last_tick FROM pgjobs.periodic WHERE name = %s", name)  # type: ignore[no-any-return]


def daily_tick_three_hours_ago(dsn: str) -> tuple[str, datetime]:
    """A daily cron whose newest tick was about three hours ago (by the database clock),
    so every tick in the tests is hours away from now and nothing depends on timing."""
    now: datetime = scalar(dsn, "SELECT now()")
    tick = (now - timedelta(hours=3)).astimezone(UTC).replace(second=0, microsecond=0)
    return f"{tick.minute} {tick.hour} * * *", tick


# -- catch-up policies -------------------------------------------------------------------


@pytest.mark.parametrize(("policy", "window", "days_back"), [
    ("latest", None, [0]),
    ("skip", None, []),
    ("all", timedelta(days=3), [1, 0]),
    ("all", timedelta(hours=26), [0]),  # the tick of 27 hours ago is outside the window
])
def test_missed_ticks_follow_the_catch_up_policy(
    fresh_dsn: str, policy: str, window: timedelta | None, days_back: list[int]
) -> None:
    app, report = new_app(fresh_dsn)
    cron, newest = daily_tick_three_hours_ago(fresh_dsn)
    app.schedule(report, cron, name="daily", kwargs={"day": "today"}, catch_up=policy,
                 catch_up_window=window)
    sync(app)
    # No worker ran for two days: the ticks of 27 and 3 hours ago were missed.
    query(fresh_dsn, "UPDATE pgjobs.periodic SET last_tick = %s", newest - timedelta(days=2))
    ids = tick(app)
    expected = [newest - timedelta(days=d) for d in days_back]
    assert tick_jobs(fresh_dsn) == [(t, "daily", "report") for t in expected]
    assert len(ids) == len(expected)
    assert last_tick(fresh_dsn, "daily") == newest  # passed-over ticks are handled too
    assert tick(app) == []  # and nothing is due again
    if ids:
        row = query(fresh_dsn, "SELECT args, queue, state FROM pgjobs.jobs WHERE id = %s",
                    ids[-1])
        assert row == [({"day": "today"}, "reports", "available")]
        assert scalar(fresh_dsn, "SELECT last_job_id FROM pgjobs.periodic") == ids[-1]


def test_skip_still_enqueues_a_tick_found_on_time(fresh_dsn: str) -> None:
    app, report = new_app(fresh_dsn)
    app.schedule(report, "* * * * * *", name="secondly", catch_up="skip")
    sync(app)
    query(fresh_dsn, "UPDATE pgjobs.periodic SET last_tick = now() - interval '1 hour'")
    assert len(tick(app)) == 1
    ((when, name, _),) = tick_jobs(fresh_dsn)
    age = scalar(fresh_dsn, "SELECT now() - %s::timestamptz", when)
    assert name == "secondly" and timedelta(0) <= age < timedelta(seconds=2)
    assert last_tick(fresh_dsn, "secondly") == when


def test_all_catches_up_in_chunks_oldest_first(fresh_dsn: str) -> None:
    app, report = new_app(fresh_dsn)
    app.schedule(report, "* * * * * */10", name="tenly", catch_up="all",
                 catch_up_window=timedelta(hours=2))
    sync(app)
    query(fresh_dsn, "UPDATE pgjobs.periodic SET last_tick = "
                     "date_trunc('minute', now()) - interval '40 minutes'")
    ids = tick(app)  # 240 ticks and more: three transactions of at most 100
    ticks = [t for t, _, _ in tick_jobs(fresh_dsn)]
    assert len(ids) == len(ticks) >= 240
    assert ticks == sorted(ticks)
    assert all(b - a == timedelta(seconds=10) for a, b in itertools.pairwise(ticks))
    assert last_tick(fresh_dsn, "tenly") == ticks[-1]


# -- the schedule table ------------------------------------------------------------------


def test_new_schedules_start_now_and_removed_ones_are_disabled_then_listed(
    fresh_dsn: str,
) -> None:
    app, report = new_app(fresh_dsn)
    cron, newest = daily_tick_three_hours_ago(fresh_dsn)
    app.schedule(report, cron, name="daily", tz="UTC")
    app.schedule(report, "0 9 * * 1", name="monday", tz="Europe/Berlin")
    sync(app)
    assert tick(app) == []  # the tick of three hours ago predates the schedule
    rows = query(fresh_dsn, "SELECT name, enabled, last_tick <= now(), task, queue, timezone "
                            "FROM pgjobs.periodic ORDER BY name")
    assert rows == [("daily", True, True, "report", "reports", "UTC"),
                    ("monday", True, True, "report", "reports", "Europe/Berlin")]

    later, later_report = new_app(fresh_dsn)  # the next deploy dropped "monday"
    later.schedule(later_report, cron, name="daily")
    assert sync(later) == ["monday"]
    assert query(fresh_dsn, "SELECT name, enabled FROM pgjobs.periodic ORDER BY name") == [
        ("daily", True), ("monday", False)]
    query(fresh_dsn, "UPDATE pgjobs.periodic SET last_tick = %s", newest - timedelta(days=2))
    assert len(tick(later)) == 1  # "daily" catches up; "monday" is not ticked

    result = CliRunner().invoke(cli, ["--dsn", fresh_dsn, "periodic", "list"])
    assert result.exit_code == 0, result.output
    header, daily, monday = result.output.splitlines()
    assert header.split()[:3] == ["NAME", "TASK", "QUEUE"]
    assert daily.split()[:5] == ["daily", "report", "reports", *cron.split()[:2]]
    assert newest.isoformat(sep=" ") in daily  # the last tick
    assert (newest + timedelta(days=1)).isoformat(sep=" ") in daily  # the next tick
    assert " yes " in daily and " no " in monday

    # Back in the code: enabled again, from now on (the ticks it missed are not due).
    sync(app)
    assert scalar(fresh_dsn, "SELECT enabled AND last_tick > now() - interval '1 minute' "
                             "FROM pgjobs.periodic WHERE name = 'monday'")


def test_schedules_are_validated_when_declared(fresh_dsn: str) -> None:
    app, report = new_app(fresh_dsn)
    with pytest.raises(pgjobs.InvalidOption, match="not a cron expression"):
        app.schedule(report, "every five minutes")
    with pytest.raises(pgjobs.InvalidOption, match="unknown time zone"):
        app.schedule(report, "* * * * *", tz="Mars/Olympus")
    with pytest.raises(pgjobs.InvalidOption, match="catch_up must be one of"):
        app.schedule(report, "* * * * *", catch_up="never")
    with pytest.raises(pgjobs.InvalidOption, match="only applies to catch_up='all'"):
        app.schedule(report, "* * * * *", catch_up_window=timedelta(hours=1))
    with pytest.raises(pgjobs.InvalidArgs, match="unexpected argument"):
        app.schedule(report, "* * * * *", kwargs={"nope": 1})
    with pytest.raises(pgjobs.ConfigurationError, match=r"above @app\.job"):

        @app.periodic("* * * * *")  # type: ignore[arg-type]
        def not_a_task() -> None: ...

    app.schedule(report, "* * * * *")
    with pytest.raises(pgjobs.ConfigurationError, match="declared twice"):
        app.schedule(report, "*/5 * * * *")


def test_tick_jobs_go_through_the_ordinary_enqueue(fresh_dsn: str) -> None:
    app = pgjobs.App(dsn=fresh_dsn)

    @app.periodic("* * * * * *", name="sync_customer", kwargs={"customer_id": 7},
                  catch_up="latest")
    @app.job(name="sync", concurrency_key="customer:{customer_id}", concurrency_limit=1)
    def sync_customer(customer_id: int) -> None:
        pass

    sync(app)
    query(fresh_dsn, "UPDATE pgjobs.periodic SET last_tick = now() - interval '1 minute'")
    (job_id,) = tick(app)
    row = query(fresh_dsn, "SELECT concurrency_key, concurrency_limit, args FROM pgjobs.jobs "
                           "WHERE id = %s", job_id)
    assert row == [("customer:7", 1, {"customer_id": 7})]


def test_racing_enqueuers_enqueue_each_tick_once(fresh_dsn: str) -> None:
    app, report = new_app(fresh_dsn)
    app.schedule(report, "* * * * * *", name="secondly", catch_up="all",
                 catch_up_window=timedelta(hours=1))
    sync(app)

    async def race() -> list[tuple[list[int], list[tuple[Any, ...]]]]:
        conns = [await psycopg.AsyncConnection.connect(fresh_dsn, autocommit=True)
                 for _ in range(4)]
        try:
            rounds = []
            for _ in range(20):
                # Reopen the last five seconds of ticks, then let four enqueuers race.
                before = await asyncio.to_thread(scalar, fresh_dsn, """
                    UPDATE pgjobs.periodic SET last_tick = last_tick - interval '5 seconds'
                    RETURNING (SELECT coalesce(max(id), 0) FROM pgjobs.jobs)""")
                results = await asyncio.gather(
                    *(PeriodicEnqueuer(app).run_once(conn) for conn in conns))
                counts = await asyncio.to_thread(
                    query, fresh_dsn, "SELECT meta->>'tick', count(*) FROM pgjobs.jobs "
                                      "WHERE id > %s GROUP BY 1", before)
                rounds.append(([i for r in results for i in r], counts))
            return rounds
        finally:
            for conn in conns:
                await conn.close()

    for ids, counts in asyncio.run(race()):
        assert len(ids) == len(counts) >= 5
        assert {n for _, n in counts} == {1}


# -- which workers tick ------------------------------------------------------------------


def test_a_schedule_is_ticked_only_by_workers_that_serve_its_queue(fresh_dsn: str) -> None:
    """Real worker processes of an app with a schedule per queue: one that serves only
    mail enqueues mail ticks and never strands a report tick in the unserved reports
    queue; a worker of reports, once started, ticks and runs the reports schedule."""

    def queued(queue: str) -> int:
        return int(scalar(fresh_dsn, "SELECT count(*) FROM pgjobs.jobs WHERE queue = %s",
                          queue))

    def succeeded(queue: str) -> int:
        return int(scalar(fresh_dsn, "SELECT count(*) FROM pgjobs.jobs WHERE queue = %s "
                                     "AND state = 'succeeded'", queue))

    args = ("--poll-interval", "0.2", "--lease", "5")
    mail = WorkerProcess(fresh_dsn, "--queues", "mail", *args,
                         app="workerapps.periodic_queues:app")
    reports: WorkerProcess | None = None
    try:
        # Both schedules are due every second and were ticked in the same pass before:
        # three mail ticks mean three passes in which a report tick was due.
        wait_until(lambda: succeeded("mail") >= 3, 60, "three mail ticks run")
        assert queued("reports") == 0, mail.log()
        # Synced all the same: both schedules are in the table, enabled.
        assert query(fresh_dsn, "SELECT name, enabled FROM pgjobs.periodic ORDER BY name") == [
            ("mail_digest", True), ("nightly_report", True)]
        reports = WorkerProcess(fresh_dsn, "--queues", "reports", *args,
                                app="workerapps.periodic_queues:app")
        wait_until(lambda: succeeded("reports") >= 2, 60, "report ticks run")
        # Each worker ticks its own queue's schedule: still one job per tick.
        assert query(fresh_dsn, "SELECT count(*) = count(DISTINCT meta->>'tick') "
                                "FROM pgjobs.jobs GROUP BY queue") == [(True,), (True,)]
    finally:
        for worker in (mail, reports):
            if worker is not None:
                worker.close()
