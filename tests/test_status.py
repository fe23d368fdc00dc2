"""`pgjobs status`: the numbers it shows, the warnings it raises, its exit status."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import psycopg

import pgjobs
from pgjobs.ops.status import duration
from pgjobs.testing import drain
from tests.helpers import query
from tests.test_cli import run
from tests.test_enqueue import register


def status(dsn: str, *flags: str) -> tuple[int, dict[str, Any]]:
    result = run("status", "--json", *flags, PGJOBS_DATABASE_URL=dsn)
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


def codes(report: dict[str, Any]) -> list[str]:
    return [w["code"] for w in report["warnings"]]


def messages(report: dict[str, Any], code: str) -> list[str]:
    return [w["message"] for w in report["warnings"] if w["code"] == code]


def job(dsn: str, queue: str, state: str = "available", run_in: timedelta = timedelta(0),
        attempt: int = 0) -> None:
    running = state == "running"
    query(dsn, "INSERT INTO pgjobs.jobs (queue, task, state, run_at, attempt, lease_token, "
               "lease_expires_at, finished_at) VALUES (%s, 't', %s, now() + %s, %s, "
               "CASE WHEN %s THEN gen_random_uuid() END, "
               "CASE WHEN %s THEN now() + interval '1 minute' END, "
               "CASE WHEN %s = 'dead' THEN now() END)",
          queue, state, run_in, attempt, running, running, state)


def worker(dsn: str, queues: str, beat: timedelta = timedelta(0), lease: float = 30,
           tasks: list[str] | None = None) -> int:
    """A live worker row; ``tasks``: the tasks it says it knows (None: it does not say)."""
    meta: dict[str, object] = {"lease": lease}
    if tasks is not None:
        meta["tasks"] = tasks
    rows = query(dsn, "INSERT INTO pgjobs.workers (host, pid, queues, concurrency, "
                      "heartbeat_at, meta) VALUES ('box', 4242, string_to_array(%s, ','), 10, "
                      "now() - %s, %s::jsonb) RETURNING id",
                 queues, beat, json.dumps(meta))
    return int(rows[0][0])


def test_an_idle_schema_is_ok(fresh_dsn: str) -> None:
    result = run("status", PGJOBS_DATABASE_URL=fresh_dsn)
    assert result.exit_code == 0, result.output
    assert "QUEUES" in result.stdout and "WORKERS" in result.stdout
    assert result.stdout.rstrip().endswith("OK: no warnings")
    code, report = status(fresh_dsn)
    assert code == 0 and report["ok"] is True and report["warnings"] == []
    assert {t["table"] for t in report["tables"]} >= {"jobs", "workers", "batches"}


def test_queue_counts_by_kind(fresh_dsn: str) -> None:
    worker(fresh_dsn, "mail")
    job(fresh_dsn, "mail", run_in=-timedelta(minutes=3))
    job(fresh_dsn, "mail")
    job(fresh_dsn, "mail", run_in=timedelta(hours=1))
    job(fresh_dsn, "mail", run_in=timedelta(minutes=5), attempt=2)
    job(fresh_dsn, "mail", "running")
    job(fresh_dsn, "mail", "dead")
    job(fresh_dsn, "mail", "succeeded")
    code, report = status(fresh_dsn)
    (mail,) = report["queues"]
    assert {k: mail[k] for k in ("queue", "available", "scheduled", "retrying", "running",
                                 "dead", "paused")} == {
        "queue": "mail", "available": 2, "scheduled": 1, "retrying": 1, "running": 1,
        "dead": 1, "paused": False}
    assert 180 <= mail["oldest_wait"] < 3600
    assert code == 0, report["warnings"]
    (row,) = report["workers"]
    assert (row["host"], row["pid"], row["state"], row["stale"], row["lease"]) == (
        "box", 4242, "running", False, 30.0)


def test_due_jobs_without_a_worker_for_their_queue(fresh_dsn: str) -> None:
    worker(fresh_dsn, "default")
    job(fresh_dsn, "reports")
    code, report = status(fresh_dsn)
    assert code == 1 and report["ok"] is False
    assert codes(report) == ["queue_unserved"]
    assert "--queues reports" in messages(report, "queue_unserved")[0]


def test_jobs_of_a_task_no_worker_has_are_shown(fresh_app: pgjobs.App, fresh_dsn: str) -> None:
    register(fresh_app, "shop.send_mail", queue="mail")
    producer = pgjobs.App(dsn=fresh_dsn, strict_names=False)  # does not import the workers
    with psycopg.connect(fresh_dsn) as conn:
        for n in range(3):
            producer.enqueue(conn, "send_mail", user_id=n)  # the short name: a typo
        producer.task("send_mail", max_attempts=1).enqueue(conn, user_id=9)
        producer.enqueue(conn, "shop.send_mail", user_id=1)
    # workers hand them back unrun, for a worker that has their task
    assert drain(fresh_app) == {"unknown_task": 4, "succeeded": 1}
    # one waited longer than the grace: the next hand-back is its death
    query(fresh_dsn, "UPDATE pgjobs.jobs SET created_at = now() - interval '2 hours', "
                     "run_at = now() WHERE (args->>'user_id')::int = 9")
    assert drain(fresh_app, unknown_task_grace=60) == {"unknown_task": 1}
    worker(fresh_dsn, "default,mail", tasks=["shop.send_mail"])
    code, report = status(fresh_dsn)
    (unknown,) = report["unknown_tasks"]
    assert {k: unknown[k] for k in ("queue", "task", "waiting", "dead", "last_seen_at")} == {
        "queue": "default", "task": "send_mail", "waiting": 3, "dead": 1,
        "last_seen_at": None}
    assert code == 1 and codes(report) == ["unknown_task"]
    (message,) = messages(report, "unknown_task")
    assert "4 job(s) of task 'send_mail' in queue 'default'" in message
    assert "3 waiting for one, 1 dead; a worker last knew it: never" in message
    screen = run("status", PGJOBS_DATABASE_URL=fresh_dsn)
    assert "UNKNOWN TASKS" in screen.stdout and "WARNING [unknown_task]" in screen.stdout


def test_a_paused_queue_with_due_jobs(fresh_dsn: str) -> None:
    worker(fresh_dsn, "mail")
    job(fresh_dsn, "mail")
    assert run("queue", "pause", "mail", PGJOBS_DATABASE_URL=fresh_dsn).exit_code == 0
    code, report = status(fresh_dsn)
    assert code == 1 and codes(report) == ["queue_paused"]
    assert "pgjobs queue resume mail" in messages(report, "queue_paused")[0]
    assert report["queues"][0]["paused"] is True


def test_a_queue_whose_oldest_job_waits_too_long(fresh_dsn: str) -> None:
    worker(fresh_dsn, "mail")
    job(fresh_dsn, "mail", run_in=-timedelta(minutes=3))
    assert status(fresh_dsn)[0] == 0  # the default limit is 5 minutes
    code, report = status(fresh_dsn, "--max-wait", "60")
    assert code == 1 and codes(report) == ["queue_waiting"]
    assert "has waited 3m" in messages(report, "queue_waiting")[0]


def test_a_silent_worker_is_stale_after_its_lease(fresh_dsn: str) -> None:
    stale = worker(fresh_dsn, "mail", beat=timedelta(minutes=2), lease=30)
    worker(fresh_dsn, "mail", beat=timedelta(minutes=2), lease=300)
    code, report = status(fresh_dsn)
    assert code == 1 and codes(report) == ["worker_stale"]
    assert messages(report, "worker_stale")[0].startswith(f"worker {stale} (box pid 4242")
    assert [w["stale"] for w in report["workers"]] == [True, False]
    screen = run("status", PGJOBS_DATABASE_URL=fresh_dsn)
    assert screen.exit_code == 1 and "running (stale)" in screen.stdout


def test_an_overdue_schedule_and_a_disabled_one(fresh_dsn: str) -> None:
    query(fresh_dsn, "INSERT INTO pgjobs.periodic (name, schedule, task, queue, last_tick, "
                     "enabled, paused) VALUES ('minutely', '* * * * *', 't', 'default', "
                     "now() - interval '1 hour', true, false), ('nightly', '0 3 * * *', 't', "
                     "'default', now() - interval '3 days', false, false), ('weekly', "
                     "'0 3 * * 1', 't', 'default', now(), true, true)")
    code, report = status(fresh_dsn)
    assert code == 1 and codes(report) == ["periodic_overdue"]
    assert "'minutely'" in messages(report, "periodic_overdue")[0]
    nightly = next(p for p in report["periodic"] if p["name"] == "nightly")
    assert nightly["enabled"] is False and nightly["next_tick"] is None
    screen = run("status", PGJOBS_DATABASE_URL=fresh_dsn).stdout
    assert "no (gone from the code)" in screen and "yes (paused)" in screen


# -- the xmin horizon (RELIABILITY.md: a long-held snapshot elsewhere pins vacuum) ---------


def test_a_held_snapshot_is_named_while_jobs_churn(fresh_app: pgjobs.App,
                                                   fresh_dsn: str) -> None:
    app, noop = fresh_app, register(fresh_app, "noop")
    report_conn = psycopg.connect(fresh_dsn, application_name="nightly-report")
    with report_conn:
        report_conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        report_conn.execute("SELECT count(*) FROM pgjobs.jobs")  # takes the snapshot
        pid = report_conn.info.backend_pid

        noop.enqueue_many(None, [{"n": n} for n in range(1500)])
        assert drain(app, lease=5.0)["succeeded"] == 1500
        query(fresh_dsn, "VACUUM pgjobs.jobs")  # cannot remove what the snapshot may see

        code, report = status(fresh_dsn, "--max-xact-age", "0", "--max-dead-tuples", "1000")
        assert code == 1
        pinned = [m for m in messages(report, "xmin_horizon") if f"backend pid {pid} " in m]
        assert len(pinned) == 1, report["warnings"]
        assert "application_name 'nightly-report'" in pinned[0]
        assert "state 'idle in transaction'" in pinned[0]
        assert f"pg_terminate_backend({pid})" in pinned[0]
        (dead,) = messages(report, "dead_tuples")
        assert dead.startswith("pgjobs.jobs holds ") and f"backend pid {pid}" in dead
        jobs = next(t for t in report["tables"] if t["table"] == "jobs")
        assert jobs["dead_tuples"] >= 1000

        screen = run("status", "--max-xact-age", "0", "--max-dead-tuples", "1000",
                     PGJOBS_DATABASE_URL=fresh_dsn)
        text = " ".join(screen.stdout.split())
        assert screen.exit_code == 1  # the same warning (its age may have moved on since)
        assert pinned[0].split(" has held")[0] in text and f"pg_terminate_backend({pid})" in text
        report_conn.commit()

    query(fresh_dsn, "VACUUM pgjobs.jobs")
    _, report = status(fresh_dsn, "--max-xact-age", "0", "--max-dead-tuples", "1000")
    assert not [m for m in messages(report, "xmin_horizon") if f"backend pid {pid} " in m]
    assert messages(report, "dead_tuples") == []
    stopped = query(fresh_dsn, "SELECT state, (meta->>'lease')::float8 FROM pgjobs.workers")
    assert stopped == [("stopped", 5.0)]  # each worker records its lease


# -- cannot tell -------------------------------------------------------------------------


def test_an_unmigrated_database_is_unknown(empty_dsn: str) -> None:
    result = run("status", PGJOBS_DATABASE_URL=empty_dsn)
    assert result.exit_code == 3
    assert "pgjobs migrate" in result.output


def test_no_database_is_unknown() -> None:
    result = run("status")
    assert result.exit_code == 3 and "pgjobs dev" in result.output


def test_durations_read_at_a_glance() -> None:
    assert [duration(s) for s in (None, 0, 59, 61, 3599, 3661, 90_061)] == [
        "-", "0s", "59s", "1m01s", "59m59s", "1h01m", "1d01h"]
