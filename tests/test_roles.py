"""Least-privilege roles (`pgjobs roles`): the owner migrates, the app enqueues and reads,
the worker runs jobs; each can do its work, and "cannot" means PostgreSQL refuses with
InsufficientPrivilege."""

from __future__ import annotations

import secrets
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql
from psycopg.conninfo import make_conninfo

import pgjobs
from pgjobs.ops import migrate as _migrate
from pgjobs.ops.cli import cli
from pgjobs.ops.roles import GRANTS, Roles, roles_sql
from tests.dashboard_data import HOSTILE, PAGES, client, csrf_of, seed
from tests.deploy import COPY_ROWS, enqueue_every_way
from tests.helpers import WorkerProcess, query, scalar, wait_until
from tests.workerapps.deployed import HARNESS

pytestmark = pytest.mark.xdist_group("worker")


@dataclass
class Deployment:
    """A database set up the documented way: roles, migrate as the owner, roles again."""

    admin: str
    owner: str
    app: str
    worker: str
    dashboard: str
    dashboard_readonly: str


@pytest.fixture
def deployment(empty_dsn: str) -> Iterator[Deployment]:
    suffix = secrets.token_hex(4)  # roles are cluster-wide: one set per test
    roles = Roles(owner=f"owner_{suffix}", app=f"app_{suffix}", worker=f"worker_{suffix}",
                  dashboard=f"dash_{suffix}", dashboard_readonly=f"dashro_{suffix}")
    password = secrets.token_hex(12)  # works whether the server trusts or checks passwords
    script = roles_sql("pgjobs", roles)
    with psycopg.connect(empty_dsn, autocommit=True) as admin:
        admin.execute(script)
        for name in roles.names():
            admin.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(password)))
    owner = make_conninfo(empty_dsn, user=roles.owner, password=password)
    _migrate.upgrade(owner)
    with psycopg.connect(empty_dsn, autocommit=True) as admin:
        admin.execute(script)  # again, after migrate: the new objects get their grants
        admin.execute(HARNESS)
        admin.execute(sql.SQL("GRANT SELECT, INSERT ON public.runs TO {}").format(
            sql.Identifier(roles.worker)))
    as_role = [make_conninfo(empty_dsn, user=name, password=password)
               for name in (roles.app, roles.worker, roles.dashboard, roles.dashboard_readonly)]
    yield Deployment(empty_dsn, owner, *as_role)
    with psycopg.connect(empty_dsn, autocommit=True) as admin:
        admin.execute("DROP TABLE public.runs")
        admin.execute("DROP SCHEMA pgjobs CASCADE")
        for name in reversed(roles.names()):
            admin.execute(sql.SQL("DROP OWNED BY {}; DROP ROLE {}").format(
                sql.Identifier(name), sql.Identifier(name)))


def refused(
    dsn: str, statement: str | sql.Composable, params: dict[str, Any] | None = None
) -> None:
    """``statement`` fails with InsufficientPrivilege when run as the role of ``dsn``."""
    with psycopg.connect(dsn) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement, params)


def test_roles_sql_quotes_names_and_refuses_bad_ones() -> None:
    script = roles_sql("Jobs_X", Roles(owner="o", app="a", worker="w"))
    assert 'CREATE SCHEMA IF NOT EXISTS "Jobs_X" AUTHORIZATION "o";' in script
    assert ('GRANT USAGE ON SCHEMA "Jobs_X" TO "a", "w", "pgjobs_dashboard", '
            '"pgjobs_dashboard_ro";') in script
    for bad in ("Robert'); DROP TABLE jobs;--", "UPPER", "pg_signal_backend", "public", ""):
        with pytest.raises(pgjobs.InvalidName):
            Roles(app=bad)
    with pytest.raises(pgjobs.InvalidName, match="must be different roles"):
        Roles(owner="same", app="same")
    with pytest.raises(pgjobs.InvalidName, match="must be different roles"):
        Roles(dashboard="pgjobs_worker")
    with pytest.raises(pgjobs.InvalidName):
        roles_sql("public", Roles())


def test_cli_prints_the_script_and_rejects_a_bad_name() -> None:
    runner = CliRunner()
    printed = runner.invoke(cli, ["roles", "--sql", "--worker", "jobs_runner"])
    assert printed.exit_code == 0, printed.output
    assert printed.output == roles_sql("pgjobs", Roles(worker="jobs_runner"))
    bad = runner.invoke(cli, ["roles", "--sql"], env={"PGJOBS_APP_ROLE": "x;drop"})
    assert bad.exit_code == 2 and "invalid app role name" in bad.output


def test_every_object_of_the_schema_has_its_grants(conn: psycopg.Connection[Any]) -> None:
    # A migration that adds a table, view, sequence or function fails here until GRANTS
    # says who may use it. (regprocedure prints names relative to the search_path.)
    conn.execute("SET LOCAL search_path TO pgjobs")
    # (relname as text: the union's type is otherwise name, cut at 63 characters)
    objects = {r[0] for r in conn.execute("""
        SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'pgjobs' AND c.relkind IN ('r', 'v', 'S', 'm', 'p')
        UNION ALL
        SELECT p.oid::regprocedure::text FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'pgjobs'
    """)}
    # Identity sequences are drawn from by INSERT alone, without a grant of their own.
    identity = {"batches_id_seq", "workers_id_seq", "periodic_ticks_id_seq"}
    granted = {r[0] for r in conn.execute(
        "SELECT CASE kind WHEN 'FUNCTION' THEN name::regprocedure::text ELSE name END "
        "FROM unnest(%s::text[], %s::text[]) AS g(kind, name)",
        ([g[0] for g in GRANTS], [g[1] for g in GRANTS]))}
    assert objects - identity == granted


def test_the_app_role_enqueues_and_reads(deployment: Deployment) -> None:
    app = pgjobs.App(dsn=deployment.app)
    produced = enqueue_every_way(app, deployment.app)
    app.close()
    with psycopg.connect(deployment.app) as conn:
        assert conn.execute("SELECT count(*) FROM pgjobs.jobs").fetchone() == (len(produced.ids),)
        for view in ("queue_depth", "queue_oldest_available", "failing_jobs", "batch_progress"):
            conn.execute(sql.SQL("SELECT * FROM pgjobs.{}").format(sql.Identifier(view)))
        assert app.batch_status(conn, produced.batch_id).total == 3 + COPY_ROWS


def test_the_app_role_cannot_run_change_or_destroy_jobs(deployment: Deployment) -> None:
    app = pgjobs.App(dsn=deployment.app)
    job_id = app.task("member").enqueue(n=1).id
    app.close()
    claim = {"queues": ["default"], "limit": 1, "lease": "30s", "worker_id": 1}
    for statement, params in [
        (app.queries.job_claim, claim),
        (app.queries.job_complete_fenced, {"id": job_id, "token": None, "result": None,
                                           "progress": None, "checkpoint": None}),
        ("UPDATE pgjobs.jobs SET state = 'cancelled'", None),
        ("DELETE FROM pgjobs.jobs", None),
        ("DELETE FROM pgjobs.unique_keys", None),
        ("INSERT INTO pgjobs.workers (host, pid, queues, concurrency) VALUES ('h', 1, '{}', 1)",
         None),
        ("UPDATE pgjobs.queues SET paused = true", None),
        ("TRUNCATE pgjobs.jobs", None),
        ("DROP TABLE pgjobs.jobs", None),
        ("ALTER TABLE pgjobs.jobs ADD COLUMN x int", None),
        ("CREATE TABLE pgjobs.mine (x int)", None),
    ]:
        refused(deployment.app, statement, params)
    assert scalar(deployment.admin, "SELECT state FROM pgjobs.jobs WHERE id = %s",
                  job_id) == "available"


def test_the_worker_role_retries_and_cancels_jobs_by_hand_and_the_app_role_cannot(
    deployment: Deployment
) -> None:
    producer = pgjobs.App(dsn=deployment.app)
    waiting = producer.task("member").options(unique_key="k").enqueue(n=1).id
    dead = producer.task("member").enqueue(n=2).id
    query(deployment.admin, "UPDATE pgjobs.jobs SET state = 'dead', finished_at = now() "
          "WHERE id = %s", dead)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        producer.cancel_jobs(None, [waiting])
    producer.close()
    operator = pgjobs.App(dsn=deployment.worker)
    assert [c.changed for c in operator.cancel_jobs(None, [waiting])] == [True]
    assert [c.changed for c in operator.retry_jobs(None, [dead, waiting])] == [True, True]
    operator.close()
    assert scalar(deployment.admin, "SELECT job_id FROM pgjobs.unique_keys WHERE key = 'k'") \
        == waiting


def test_the_app_role_pauses_resumes_and_runs_schedules_and_nothing_more(
    deployment: Deployment,
) -> None:
    query(deployment.admin, "INSERT INTO pgjobs.periodic (name, schedule, task, queue, "
                            "last_tick) VALUES ('nightly', '0 3 * * *', 'member', 'default', "
                            "now())")
    app = pgjobs.App(dsn=deployment.app)
    app.pause_periodic(None, "nightly")
    app.resume_periodic(None, "nightly")
    requested = app.run_periodic_now(None, "nightly")
    app.close()
    assert query(deployment.admin, "SELECT paused, resumed_at IS NOT NULL, run_requested_at "
                                   "FROM pgjobs.periodic") == [(False, True, requested)]
    assert scalar(deployment.app, "SELECT count(*) FROM pgjobs.periodic_ticks") == 0  # reads
    # A column grant: the operator columns only; the ledger is the workers'.
    for statement in ["UPDATE pgjobs.periodic SET enabled = false",
                      "UPDATE pgjobs.periodic SET last_tick = now()",
                      "DELETE FROM pgjobs.periodic_ticks",
                      "INSERT INTO pgjobs.periodic_ticks (name, tick, first_tick, outcome, "
                      "reason) VALUES ('nightly', now(), now(), 'enqueued', 'manual')"]:
        refused(deployment.app, statement)


@pytest.mark.slow
def test_a_worker_as_the_worker_role_runs_everything(deployment: Deployment) -> None:
    app = pgjobs.App(dsn=deployment.app)
    produced = enqueue_every_way(app, deployment.app)
    app.close()
    # A job whose worker vanished: running, with a lease that has already expired.
    lost = scalar(deployment.admin, """
        INSERT INTO pgjobs.jobs (task, state, attempt, lease_token, lease_expires_at, worker_id)
        VALUES ('member', 'running', 1, gen_random_uuid(), now() - interval '1 minute', 0)
        RETURNING id""")
    query(deployment.admin, "UPDATE pgjobs.jobs SET args = '{\"n\": 7}' WHERE id = %s", lost)
    worker = WorkerProcess(deployment.worker, "--poll-interval", "0.2",
                           app="workerapps.deployed:app")
    try:
        expected = [*produced.ids, lost]
        wait_until(lambda: scalar(
            deployment.admin, "SELECT count(*) FROM pgjobs.jobs WHERE id = ANY(%s) "
            "AND state = 'succeeded'", expected) == len(expected),
            what="every job to succeed")
        wait_until(lambda: scalar(deployment.admin, "SELECT count(*) FROM public.runs "
                                  "WHERE task = 'on_batch_success'") == 1,
                   what="the batch's success callback")
        wait_until(lambda: scalar(deployment.admin, "SELECT count(*) FROM public.runs "
                                  "WHERE task = 'tick'") >= 2, what="periodic ticks")
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.log()
        log = worker.log()
    finally:
        worker.close()
    assert "permission denied" not in log, log
    assert scalar(deployment.admin, "SELECT count(*) FROM public.runs "
                  "WHERE task = 'once_flaky' AND attempt = 2") == 6
    assert scalar(deployment.admin, "SELECT recoveries FROM pgjobs.jobs WHERE id = %s", lost) == 1
    assert scalar(deployment.admin, "SELECT claimed FROM pgjobs.limit_keys") == 3  # keyed jobs
    assert scalar(deployment.admin, "SELECT state FROM pgjobs.workers") == "stopped"


def test_the_worker_role_cannot_own_or_destroy_anything(deployment: Deployment) -> None:
    for statement in [
        "DELETE FROM pgjobs.periodic",  # (jobs, batches, workers: the pruner deletes)
        "DELETE FROM pgjobs.queues",
        "TRUNCATE pgjobs.jobs",
        "DROP TABLE pgjobs.jobs",
        "ALTER TABLE pgjobs.jobs ADD COLUMN x int",
        "CREATE TABLE pgjobs.mine (x int)",
        "CREATE FUNCTION pgjobs.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "CREATE TABLE public.mine (x int)",
        "UPDATE pgjobs.alembic_version SET version_num = '0001'",
        "DROP SCHEMA pgjobs CASCADE",
    ]:
        refused(deployment.worker, statement)


def test_roles_is_rerunnable_and_takes_back_what_it_no_longer_grants(
    deployment: Deployment,
) -> None:
    worker_role = scalar(deployment.worker, "SELECT current_user")
    query(deployment.admin, sql.SQL("GRANT DELETE, TRUNCATE ON pgjobs.queues TO {}").format(
        sql.Identifier(worker_role)).as_string(None))
    app_role = scalar(deployment.app, "SELECT current_user")
    owner_role = scalar(deployment.owner, "SELECT current_user")
    result = CliRunner().invoke(cli, [
        "--dsn", deployment.admin, "roles", "--owner", owner_role, "--app", app_role,
        "--worker", worker_role,
        "--dashboard", scalar(deployment.dashboard, "SELECT current_user"),
        "--dashboard-readonly", scalar(deployment.dashboard_readonly, "SELECT current_user")])
    assert result.exit_code == 0, result.output
    refused(deployment.worker, "DELETE FROM pgjobs.queues")
    refused(deployment.worker, "TRUNCATE pgjobs.queues")
    # Migrating again as the owner (a no-op at head) keeps working.
    _migrate.upgrade(deployment.owner)


def test_cli_before_migrate_says_what_comes_next(empty_dsn: str) -> None:
    kinds = ("owner", "app", "worker", "dashboard", "dashboard-readonly")
    names = [f"{kind.replace('-', '_')}_{secrets.token_hex(4)}" for kind in kinds]
    result = CliRunner().invoke(cli, ["--dsn", empty_dsn, "roles", *[
        part for kind, name in zip(kinds, names, strict=True) for part in (f"--{kind}", name)]])
    try:
        assert result.exit_code == 0, result.output
        assert f"run `pgjobs migrate` as {names[0]}, then `pgjobs roles` again" in result.output
        assert scalar(empty_dsn, "SELECT nspowner::regrole::text FROM pg_namespace "
                      "WHERE nspname = 'pgjobs'") == names[0]
    finally:
        query(empty_dsn, "DROP SCHEMA IF EXISTS pgjobs")
        for name in names:
            query(empty_dsn, sql.SQL("DROP ROLE IF EXISTS {}").format(
                sql.Identifier(name)).as_string(None))


def test_cli_run_by_an_unprivileged_role_says_who_may_run_it(deployment: Deployment) -> None:
    result = CliRunner().invoke(cli, ["--dsn", deployment.app, "roles"])
    assert result.exit_code == 1
    assert "permission denied" in result.output and "as a superuser" in result.output


def test_the_dashboard_role_shows_every_page_and_takes_every_action(
    deployment: Deployment,
) -> None:
    rows = seed(deployment.admin)
    child_job = scalar(deployment.admin, "SELECT id FROM pgjobs.jobs WHERE batch_id = %s",
                       rows.child_batch)
    with client(deployment.dashboard) as c:
        for path in [*PAGES, *rows.detail_pages(), "/jobs/bulk?action=cancel&state=available"]:
            assert c.get(path).status_code == 200, path
        token = csrf_of(c.get("/").text)
        # Cancelling the last jobs of the nested batches completes both, which fires the
        # outer one's on_success: the triggers count, release and insert as this role.
        for path, form in [(f"/jobs/{rows.dead}/retry", {}),
                           ("/jobs/bulk", {"action": "cancel", "batch": str(rows.child_batch),
                                           "upto": str(child_job)}),
                           (f"/jobs/{rows.available}/cancel", {}),
                           (f"/jobs/{rows.expired}/delete", {}),
                           ("/queues/mail/pause", {}),
                           ("/periodic/pause", {"name": HOSTILE}),
                           ("/periodic/run-now", {"name": HOSTILE})]:
            done = c.post(path, data={"csrf": token, **form})
            assert done.status_code == 200 and "may not" not in done.text, (path, done.text)
    assert scalar(deployment.admin, "SELECT count(*) FROM pgjobs.jobs WHERE task = 'mark_sent'") \
        == 1
    assert scalar(deployment.admin, "SELECT state FROM pgjobs.jobs WHERE id = %s",
                  rows.dead) == "available"
    assert scalar(deployment.admin, "SELECT paused FROM pgjobs.queues WHERE name = 'mail'")
    assert query(deployment.admin, "SELECT paused, run_requested_at IS NOT NULL "
                                   "FROM pgjobs.periodic") == [(True, True)]
    for statement in ["UPDATE pgjobs.workers SET state = 'stopped'",
                      "DELETE FROM pgjobs.batches", "UPDATE pgjobs.periodic SET enabled = false",
                      "SELECT * FROM pgjobs.enqueue_receipts", "TRUNCATE pgjobs.jobs",
                      "DROP TABLE pgjobs.jobs", "CREATE TABLE pgjobs.mine (x int)"]:
        refused(deployment.dashboard, statement)


def test_the_read_only_dashboard_role_shows_every_page_and_changes_nothing(
    deployment: Deployment,
) -> None:
    rows = seed(deployment.admin)
    with client(deployment.dashboard_readonly, read_only=True) as c:
        for path in [*PAGES, *rows.detail_pages()]:
            assert c.get(path).status_code == 200, path
    # Even a dashboard that offers actions cannot take them as this role.
    with client(deployment.dashboard_readonly) as c:
        token = csrf_of(c.get("/").text)
        for path in (f"/jobs/{rows.dead}/retry", f"/jobs/{rows.available}/cancel",
                     f"/jobs/{rows.expired}/delete", "/queues/mail/pause"):
            refused_page = c.post(path, data={"csrf": token})
            assert refused_page.status_code == 403 and "may not do this" in refused_page.text
    for statement in ["UPDATE pgjobs.jobs SET state = 'cancelled'", "DELETE FROM pgjobs.jobs",
                      "INSERT INTO pgjobs.queues (name, paused) VALUES ('mail', true)",
                      "UPDATE pgjobs.batches SET pending = 0",
                      "SELECT * FROM pgjobs.unique_keys", "SELECT pgjobs.batch_evaluate(1)"]:
        refused(deployment.dashboard_readonly, statement)
    assert scalar(deployment.admin, "SELECT state FROM pgjobs.jobs WHERE id = %s",
                  rows.dead) == "dead"
