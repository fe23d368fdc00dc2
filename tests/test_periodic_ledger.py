"""The periodic ledger (``periodic_ticks``), pause/resume/run-now and owners, against a
real PostgreSQL: every outcome and reason, exactly-once recording under racing
enqueuers, the controls from the CLI with real workers ticking, owners sharing a schema,
and the ledger's retention."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

import pgjobs
from pgjobs.db.queries import Queries
from pgjobs.ops.cli import cli
from pgjobs.worker.config import Retention
from pgjobs.worker.maintenance.periodic import PeriodicEnqueuer
from pgjobs.worker.maintenance.prune import Pruner
from tests.helpers import WorkerProcess, query, scalar, wait_until
from tests.test_periodic import daily_tick_three_hours_ago, last_tick, new_app, sync, tick

pytestmark = pytest.mark.xdist_group("periodic")

DAY = timedelta(days=1)


def ledger(dsn: str, name: str | None = None) -> list[tuple[Any, ...]]:
    """(first_tick, tick, outcome, reason, job_id) of every ledger row, oldest first."""
    return query(dsn, "SELECT first_tick, tick, outcome, reason, job_id FROM "
                      "pgjobs.periodic_ticks WHERE %s::text IS NULL OR name = %s ORDER BY id",
                 name, name)


def job_ids(dsn: str) -> list[int]:
    return [r[0] for r in query(dsn, "SELECT id FROM pgjobs.jobs ORDER BY id")]


def run(dsn: str, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--dsn", dsn, *args])
    assert result.exit_code == 0, result.output
    return result.output


# -- outcomes and reasons ----------------------------------------------------------------


@pytest.mark.parametrize(("policy", "window", "expected"), [
    # the ticks of 51 and 27 hours ago were missed, then the one of 3 hours ago
    ("latest", None, [(-1, -1, "skipped", "catch_up"), (0, 0, "enqueued", "caught_up")]),
    ("skip", None, [(-1, 0, "skipped", "catch_up")]),
    ("all", timedelta(days=3), [(-1, -1, "enqueued", "caught_up"),
                                (0, 0, "enqueued", "caught_up")]),
    ("all", timedelta(hours=26), [(-1, -1, "missed", "outside_window"),
                                  (0, 0, "enqueued", "caught_up")]),
])
def test_each_missed_tick_is_recorded_with_its_outcome_and_reason(
    fresh_dsn: str, policy: str, window: timedelta | None,
    expected: list[tuple[int, int, str, str]],
) -> None:
    app, report = new_app(fresh_dsn)
    cron, newest = daily_tick_three_hours_ago(fresh_dsn)
    app.schedule(report, cron, name="daily", catch_up=policy, catch_up_window=window)
    sync(app)
    query(fresh_dsn, "UPDATE pgjobs.periodic SET last_tick = %s", newest - 2 * DAY)
    ids = tick(app)
    rows = ledger(fresh_dsn)
    assert [(first, last, outcome, reason) for first, last, outcome, reason, _ in rows] == [
        (newest + a * DAY, newest + b * DAY, outcome, reason)
        for a, b, outcome, reason in expected]
    # every enqueued row names its job, in order; no other row names one
    assert [job for *_, outcome, _, job in rows if outcome == "enqueued"] == ids
    assert all(job is None for *_, outcome, _, job in rows if outcome != "enqueued")
    assert last_tick(fresh_dsn, "daily") == newest
    assert tick(app) == [] and len(ledger(fresh_dsn)) == len(rows)  # recorded once


def test_a_tick_found_on_time_is_recorded_on_time(fresh_dsn: str) -> None:
    app, report = new_app(fresh_dsn)
    app.schedule(report, "* * * * * *", name="secondly", catch_up="latest")
    sync(app)
    query(fresh_dsn, "UPDATE pgjobs.periodic SET last_tick = now() - interval '1 hour'")
    (job_id,) = tick(app)
    (first, older, skipped, catch_up, none), (tick_at, _, enqueued, on_time, job) = \
        ledger(fresh_dsn)
    assert (skipped, catch_up, none) == ("skipped", "catch_up", None)
    assert (enqueued, on_time, job) == ("enqueued", "on_time", job_id)
    # the passed-over run ends one second before the enqueued tick: no tick in two rows
    assert older == tick_at - timedelta(seconds=1) and first < older
    stamped = scalar(fresh_dsn, "SELECT (meta->>'tick')::timestamptz FROM pgjobs.jobs "
                                "WHERE id = %s", job_id)
    assert stamped == tick_at


def test_a_tick_whose_unique_key_is_held_is_skipped_as_a_duplicate(fresh_dsn: str) -> None:
    app = pgjobs.App(dsn=fresh_dsn)

    @app.periodic("* * * * * *", name="unique", catch_up="latest")
    @app.job(name="unique_report", unique_for=timedelta(hours=1))
    def unique_report() -> None:
        pass

    sync(app)
    query(fresh_dsn, "UPDATE pgjobs.periodic SET last_tick = now() - interval '1 minute'")
    (first_job,) = tick(app)
    wait_until(lambda: tick(app) == [] and len(ledger(fresh_dsn)) >= 3, 10,
               "a second tick, while the first job holds the key")
    rows = ledger(fresh_dsn)
    assert rows[0][2:] == ("skipped", "catch_up", None)  # the minute before
    assert rows[1][2:] == ("enqueued", "on_time", first_job)
    assert {row[2:] for row in rows[2:]} == {("skipped", "duplicate", first_job)}
    assert job_ids(fresh_dsn) == [first_job]


def test_racing_enqueuers_record_each_tick_exactly_once(fresh_dsn: str) -> None:
    app, report = new_app(fresh_dsn)
    app.schedule(report, "* * * * * *", name="secondly", catch_up="all",
                 catch_up_window=timedelta(minutes=1))
    sync(app)
    second = timedelta(seconds=1)

    async def race() -> list[tuple[datetime, datetime, list[int], list[tuple[Any, ...]]]]:
        conns = [await psycopg.AsyncConnection.connect(fresh_dsn, autocommit=True)
                 for _ in range(4)]
        try:
            rounds = []
            for _ in range(10):
                # Put last_tick two minutes back: a minute of ticks is missed (outside the
                # window), a minute caught up; four enqueuers race for the decision.
                ((start, before),) = await asyncio.to_thread(query, fresh_dsn, """
                    UPDATE pgjobs.periodic SET last_tick = last_tick - interval '2 minutes'
                    RETURNING last_tick,
                              (SELECT coalesce(max(id), 0) FROM pgjobs.periodic_ticks)""")
                results = await asyncio.gather(
                    *(PeriodicEnqueuer(app).run_once(conn) for conn in conns))
                rows = await asyncio.to_thread(
                    query, fresh_dsn, "SELECT first_tick, tick, outcome, job_id FROM "
                                      "pgjobs.periodic_ticks WHERE id > %s "
                                      "ORDER BY first_tick", before)
                end = await asyncio.to_thread(last_tick, fresh_dsn, "secondly")
                rounds.append((start, end, [i for r in results for i in r], rows))
            return rounds
        finally:
            for conn in conns:
                await conn.close()

    for start, end, ids, rows in asyncio.run(race()):
        # The round's rows cover every tick from start to the new last_tick, each once.
        assert rows[0][0] == start.replace(microsecond=0) + second and rows[-1][1] == end
        assert all(b[0] == a[1] + second for a, b in itertools.pairwise(rows))
        assert {outcome for _, _, outcome, _ in rows} == {"missed", "enqueued"}
        assert sorted(job for *_, outcome, job in rows if outcome == "enqueued") == sorted(ids)
        assert len(ids) >= 60
    assert scalar(fresh_dsn, "SELECT count(*) FROM pgjobs.periodic_ticks WHERE "
                             "outcome = 'enqueued'") == len(job_ids(fresh_dsn))


# -- pause, resume, run now (in process) -------------------------------------------------


def test_pause_skips_ticks_survives_sync_and_resume_does_not_catch_up(fresh_dsn: str) -> None:
    app, report = new_app(fresh_dsn)
    cron, newest = daily_tick_three_hours_ago(fresh_dsn)
    app.schedule(report, cron, name="daily", catch_up="all", catch_up_window=3 * DAY)
    sync(app)
    query(fresh_dsn, "UPDATE pgjobs.periodic SET last_tick = %s", newest - 2 * DAY)

    assert run(fresh_dsn, "periodic", "pause", "daily") == "periodic schedule 'daily' paused\n"
    assert sync(app) == []  # a worker's restart does not resume it
    assert scalar(fresh_dsn, "SELECT paused FROM pgjobs.periodic")
    assert tick(app) == []
    assert ledger(fresh_dsn) == [(newest - DAY, newest, "skipped", "paused", None)]
    assert last_tick(fresh_dsn, "daily") == newest and job_ids(fresh_dsn) == []

    # Paused while no worker ran, then resumed before any did: the ticks of the pause are
    # skipped as paused all the same (no burst on resume), however the policy catches up.
    query(fresh_dsn, "UPDATE pgjobs.periodic SET last_tick = %s", newest - 2 * DAY)
    app.resume_periodic(None, "daily")
    assert not scalar(fresh_dsn, "SELECT paused FROM pgjobs.periodic")
    assert tick(app) == [] and job_ids(fresh_dsn) == []
    assert ledger(fresh_dsn)[1:] == [(newest - DAY, newest, "skipped", "paused", None)]

    # Ticks after the resume follow the policy again: resumed between the two ticks, the
    # first is skipped as paused, the second caught up.
    query(fresh_dsn, "UPDATE pgjobs.periodic SET resumed_at = %s, last_tick = %s",
          newest - DAY + timedelta(hours=1), newest - 2 * DAY)
    assert tick(app) == job_ids(fresh_dsn) and len(job_ids(fresh_dsn)) == 1
    assert ledger(fresh_dsn)[2:] == [
        (newest - DAY, newest - DAY, "skipped", "paused", None),
        (newest, newest, "enqueued", "caught_up", job_ids(fresh_dsn)[0])]


def test_run_now_enqueues_one_job_and_leaves_the_ticks_alone(fresh_dsn: str) -> None:
    app, report = new_app(fresh_dsn)
    cron, _ = daily_tick_three_hours_ago(fresh_dsn)
    app.schedule(report, cron, name="daily", kwargs={"day": "now"})
    sync(app)
    before = last_tick(fresh_dsn, "daily")
    app.pause_periodic(None, "daily")  # a manual run works on a paused schedule too

    requested = app.run_periodic_now(None, "daily")
    assert app.run_periodic_now(None, "daily") == requested  # pending: not doubled
    (job_id,) = tick(app)
    assert tick(app) == []  # the request was taken once
    assert ledger(fresh_dsn) == [(requested, requested, "enqueued", "manual", job_id)]
    assert query(fresh_dsn, "SELECT args, meta FROM pgjobs.jobs") == [
        ({"day": "now"}, {"periodic": "daily", "manual": True})]
    assert last_tick(fresh_dsn, "daily") == before
    assert scalar(fresh_dsn, "SELECT last_job_id FROM pgjobs.periodic") is None

    with pytest.raises(pgjobs.ScheduleNotFound, match="no periodic schedule named 'nope'"):
        app.run_periodic_now(None, "nope")
    with pytest.raises(pgjobs.ScheduleNotFound):
        app.pause_periodic(None, "nope")
    query(fresh_dsn, "UPDATE pgjobs.periodic SET enabled = false")
    with pytest.raises(pgjobs.ScheduleDisabled, match="is disabled"):
        app.run_periodic_now(None, "daily")
    result = CliRunner().invoke(cli, ["--dsn", fresh_dsn, "periodic", "resume", "nope"])
    assert result.exit_code == 1 and "no periodic schedule named 'nope'" in result.output


# -- with real workers -------------------------------------------------------------------


def test_cli_pause_resume_and_run_now_with_workers_ticking(fresh_dsn: str) -> None:
    """Two real workers tick a one-second schedule. Paused from the CLI, its ticks are
    recorded as skipped and enqueue nothing; resumed, they enqueue again; run-now
    enqueues one job of the daily schedule and prints its id."""

    def heartbeat_jobs() -> int:
        return int(scalar(fresh_dsn, "SELECT count(*) FROM pgjobs.jobs "
                                     "WHERE task = 'ledger.heartbeat'"))

    def paused_rows() -> int:
        return int(scalar(fresh_dsn, "SELECT count(*) FROM pgjobs.periodic_ticks "
                                     "WHERE reason = 'paused'"))

    args = ("--poll-interval", "0.2", "--lease", "5")
    workers = [WorkerProcess(fresh_dsn, *args, app="workerapps.periodic_ledger:app")
               for _ in range(2)]
    try:
        wait_until(lambda: heartbeat_jobs() >= 2, 60, "heartbeat ticks enqueued")
        run(fresh_dsn, "periodic", "pause", "heartbeat")
        paused_at: datetime = scalar(fresh_dsn, "SELECT now()")
        wait_until(lambda: paused_rows() >= 3, 30, "paused ticks recorded")
        # No tick after the pause committed was enqueued.
        assert scalar(fresh_dsn, "SELECT count(*) FROM pgjobs.jobs WHERE task = "
                                 "'ledger.heartbeat' AND (meta->>'tick')::timestamptz "
                                 "> %s", paused_at) == 0
        assert scalar(fresh_dsn, "SELECT count(*) FROM pgjobs.periodic_ticks WHERE "
                                 "outcome = 'enqueued' AND first_tick > %s", paused_at) == 0
        count = heartbeat_jobs()
        run(fresh_dsn, "periodic", "resume", "heartbeat")
        wait_until(lambda: heartbeat_jobs() >= count + 2, 30, "ticks enqueued again")

        before = last_tick(fresh_dsn, "nightly")
        output = run(fresh_dsn, "periodic", "run-now", "nightly", "--wait", "30")
        assert "enqueued as job" in output, output
        job_id = int(output.split()[-1])
        assert query(fresh_dsn, "SELECT task, args, meta->'manual' FROM pgjobs.jobs "
                                "WHERE id = %s", job_id) == [
            ("ledger.nightly", {"kind": "full"}, True)]
        assert ledger(fresh_dsn, "nightly")[-1][2:] == ("enqueued", "manual", job_id)
        assert last_tick(fresh_dsn, "nightly") == before

        show = run(fresh_dsn, "periodic", "show", "heartbeat", "--ticks", "50")
        assert "owner:          ledger-tests" in show
        assert " skipped   paused " in show and " enqueued  on_time " in show
        assert "ledger-tests" in run(fresh_dsn, "periodic", "list")
        # Every tick of the one-second schedule was recorded once, by one of the workers.
        ticks = query(fresh_dsn, "SELECT first_tick, tick FROM pgjobs.periodic_ticks "
                                 "WHERE name = 'heartbeat' ORDER BY first_tick")
        assert all(a[1] < b[0] for a, b in itertools.pairwise(ticks))
    finally:
        for worker in workers:
            worker.close()


def test_run_now_without_a_worker_reports_the_pending_request(fresh_dsn: str) -> None:
    app, report = new_app(fresh_dsn)
    app.schedule(report, "0 3 * * *", name="daily")
    sync(app)
    result = CliRunner().invoke(cli, ["--dsn", fresh_dsn, "periodic", "run-now", "daily",
                                      "--wait", "0.5"])
    assert result.exit_code == 1
    assert "run of 'daily' requested" in result.output
    assert "no worker enqueued it within 0.5s" in result.output
    assert scalar(fresh_dsn, "SELECT run_requested_at IS NOT NULL FROM pgjobs.periodic")
    (job_id,) = tick(app)  # the next worker to tick it takes the request
    assert ledger(fresh_dsn)[0][2:] == ("enqueued", "manual", job_id)


# -- owners ------------------------------------------------------------------------------


def test_owners_sharing_a_schema_disable_only_their_own_schedules(fresh_dsn: str) -> None:
    def app_of(owner: str, *names: str) -> pgjobs.App:
        app = pgjobs.App(dsn=fresh_dsn, periodic_owner=owner)

        @app.job(name=f"{owner}_task")
        def task() -> None:
            pass

        for name in names:
            app.schedule(task, "0 3 * * *", name=name)
        return app

    assert sync(app_of("billing", "invoices", "reminders")) == []
    assert sync(app_of("search", "reindex")) == []  # billing's are not missing here
    assert query(fresh_dsn, "SELECT name, owner, enabled FROM pgjobs.periodic "
                            "ORDER BY name") == [
        ("invoices", "billing", True), ("reindex", "search", True),
        ("reminders", "billing", True)]
    # billing's next deploy drops "reminders": disabled, and a run requested for it is
    # dropped (no worker has its code); search's schedule is left alone
    billing = app_of("billing", "invoices")
    billing.run_periodic_now(None, "reminders")
    assert sync(billing) == ["reminders"]
    assert query(fresh_dsn, "SELECT name, enabled, run_requested_at FROM pgjobs.periodic "
                            "ORDER BY name") == [
        ("invoices", True, None), ("reindex", True, None), ("reminders", False, None)]
    with pytest.raises(pgjobs.InvalidOption, match="periodic_owner"):
        pgjobs.App(dsn=fresh_dsn, periodic_owner=" ")


def test_rows_from_before_owners_belong_to_the_default_owner(empty_dsn: str) -> None:
    from pgjobs.ops import migrate

    migrate.upgrade(empty_dsn, "pgjobs", "0009")
    query(empty_dsn, "INSERT INTO pgjobs.periodic (name, schedule, task, queue) "
                     "VALUES ('old', '0 3 * * *', 'report', 'reports')")
    migrate.upgrade(empty_dsn, "pgjobs")
    assert query(empty_dsn, "SELECT owner, paused FROM pgjobs.periodic") == [
        ("default", False)]
    app, _ = new_app(empty_dsn)  # an App without periodic_owner: the default owner
    app.schedule(app.tasks["report"], "0 4 * * *", name="new")
    assert sync(app) == ["old"]


# -- retention ---------------------------------------------------------------------------


def test_the_pruner_deletes_ledger_rows_past_their_retention(fresh_dsn: str) -> None:
    app, report = new_app(fresh_dsn)
    app.schedule(report, "* * * * * *", name="secondly")
    sync(app)
    query(fresh_dsn, """
        INSERT INTO pgjobs.periodic_ticks (name, tick, first_tick, outcome, reason,
                                           recorded_at)
        SELECT 'secondly', t, t, 'skipped', 'paused', t
        FROM generate_series(now() - interval '10 days', now() - interval '1 hour',
                             interval '1 hour') AS t""")
    total = scalar(fresh_dsn, "SELECT count(*) FROM pgjobs.periodic_ticks")

    async def prune(policy: Retention, limit: int) -> Any:
        async with await psycopg.AsyncConnection.connect(fresh_dsn, autocommit=True) as conn:
            return await Pruner(Queries("pgjobs"), policy, limit=limit).step(conn)

    assert asyncio.run(prune(Retention(periodic_ticks=None), 100)) == {}
    week = 7 * 86_400.0
    deleted = asyncio.run(prune(Retention(periodic_ticks=week), 50))  # bounded: 50 a run
    assert deleted["periodic_ticks"] == 50
    while asyncio.run(prune(Retention(periodic_ticks=week), 50)).get("periodic_ticks"):
        pass
    kept = query(fresh_dsn, "SELECT min(recorded_at) > now() - interval '7 days', count(*) "
                            "FROM pgjobs.periodic_ticks")
    assert kept == [(True, total - 3 * 24 - 1)]  # days 10 to 7 (inclusive) are gone
    # Deleting a schedule's row by hand deletes its ledger.
    query(fresh_dsn, "DELETE FROM pgjobs.periodic")
    assert scalar(fresh_dsn, "SELECT count(*) FROM pgjobs.periodic_ticks") == 0


def test_the_ledger_is_plain_sql(fresh_dsn: str) -> None:
    """The docs' example query."""
    app, report = new_app(fresh_dsn)
    cron, newest = daily_tick_three_hours_ago(fresh_dsn)
    app.schedule(report, cron, name="daily")
    sync(app)
    query(fresh_dsn, "UPDATE pgjobs.periodic SET last_tick = %s", newest - 2 * DAY)
    (job_id,) = tick(app)
    rows = query(fresh_dsn, """
        SELECT t.tick, t.outcome, t.reason, j.id, j.state
        FROM pgjobs.periodic_ticks AS t
        LEFT JOIN pgjobs.jobs AS j ON j.id = t.job_id
        WHERE t.name = 'daily'
        ORDER BY t.id DESC
        LIMIT 20""")
    assert rows == [(newest, "enqueued", "caught_up", job_id, "available"),
                    (newest - DAY, "skipped", "catch_up", None, None)]
    assert newest.tzinfo is not None and newest.astimezone(UTC) == newest
