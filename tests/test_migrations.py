"""Migrations: an empty database migrates to exactly the reference schema (on every
supported PostgreSQL major), every revision round-trips, migrate is idempotent and safe to
run concurrently, the offline SQL gives the same schema, and pgjobs' version table never
touches the application's own alembic history.

The reference is tests/reference_schema.txt; see tests/schema_snapshot.py to regenerate it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic.script import ScriptDirectory
from click.testing import CliRunner
from psycopg import sql

import pgjobs
from pgjobs.ops import migrate as _migrate
from pgjobs.ops.cli import cli
from pgjobs.ops.devserver import embedded_bindir
from tests.schema_snapshot import REFERENCE, snapshot

Conn = psycopg.Connection[Any]
TABLES = ("jobs", "batches", "unique_keys", "periodic", "workers", "queues")
VIEWS = ("queue_depth", "queue_oldest_available", "failing_jobs", "batch_progress")


@pytest.fixture(scope="module")
def reference() -> str:
    return REFERENCE.read_text()


def relations(dsn: str, schema: str) -> set[str]:
    """Tables and views of ``schema``."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm')",
            (schema,),
        ).fetchall()
    return {r[0] for r in rows}


def revision(dsn: str, schema: str = "pgjobs") -> str | None:
    with psycopg.connect(dsn) as conn:
        return _migrate.current_revision(conn, schema)


def version_rows(dsn: str, table: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()


def test_reference_describes_the_documented_tables(reference: str) -> None:
    # Guards against regenerating the reference from a broken schema.
    for name in (*TABLES, "alembic_version"):
        assert f"table {name} kind=r " in reference
    for name in VIEWS:
        assert f"view {name} kind=v " in reference
    assert "index jobs.jobs_claim_idx CREATE INDEX jobs_claim_idx ON <schema>.jobs" in reference


def test_empty_database_migrates_to_exactly_the_reference(empty_dsn: str, reference: str) -> None:
    assert revision(empty_dsn) is None
    _migrate.upgrade(empty_dsn)
    assert snapshot(empty_dsn, "pgjobs") == reference
    assert revision(empty_dsn) == _migrate.head_revision()


def test_the_test_template_matches_the_reference(fresh_dsn: str, reference: str) -> None:
    # Every other test runs on copies of this template.
    assert snapshot(fresh_dsn, "pgjobs") == reference


def test_snapshot_notices_schema_changes(fresh_dsn: str, reference: str) -> None:
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE pgjobs.jobs ALTER COLUMN priority SET DEFAULT 1")
        conn.execute("CREATE TYPE pgjobs.mood AS ENUM ('calm', 'busy')")
        conn.execute("CREATE FUNCTION pgjobs.touch() RETURNS trigger LANGUAGE plpgsql"
                     " AS $$ BEGIN RETURN NEW; END $$")
        conn.execute("CREATE TRIGGER jobs_touch BEFORE UPDATE ON pgjobs.jobs"
                     " FOR EACH ROW EXECUTE FUNCTION pgjobs.touch()")
        conn.execute("COMMENT ON COLUMN pgjobs.jobs.queue IS 'the queue'")
        conn.execute("ALTER TABLE pgjobs.queues SET (fillfactor = 50)")
    changed = snapshot(fresh_dsn, "pgjobs")
    added = set(changed.splitlines()) - set(reference.splitlines())
    removed = set(reference.splitlines()) - set(changed.splitlines())
    assert removed == {
        "column jobs.priority #5 smallint not null default 0",
        "table queues kind=r persistence=p options=[]",
    }
    assert {line.split(" ")[0] for line in added} == {
        "column", "enum", "function", "trigger", "comment", "table"}
    assert "column jobs.priority #5 smallint not null default 1" in added
    assert "enum mood (calm, busy)" in added
    assert "comment jobs.queue the queue" in added
    assert "table queues kind=r persistence=p options=[fillfactor=50]" in added
    assert any(line.startswith("trigger jobs.jobs_touch CREATE TRIGGER jobs_touch BEFORE UPDATE"
                               " ON <schema>.jobs") for line in added)


def _revisions() -> list[str]:
    """Every revision, oldest first."""
    script = ScriptDirectory.from_config(_migrate._config("pgjobs"))
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def test_every_revision_round_trips(empty_dsn: str, reference: str) -> None:
    revisions = _revisions()
    assert revisions[-1] == _migrate.head_revision()
    before = "base"
    previous_snapshot = ""
    for rev in revisions:
        _migrate.upgrade(empty_dsn, "pgjobs", rev)
        at_rev = snapshot(empty_dsn, "pgjobs")
        assert revision(empty_dsn) == rev
        _migrate.downgrade(empty_dsn, "pgjobs", before)
        # A real downgrade: back to the previous schema exactly (at base: nothing but
        # alembic's own, now empty, version table).
        if before == "base":
            assert relations(empty_dsn, "pgjobs") == {"alembic_version"}
            assert revision(empty_dsn) is None
        else:
            assert snapshot(empty_dsn, "pgjobs") == previous_snapshot
            assert revision(empty_dsn) == before
        _migrate.upgrade(empty_dsn, "pgjobs", rev)
        assert snapshot(empty_dsn, "pgjobs") == at_rev
        before, previous_snapshot = rev, at_rev
    assert snapshot(empty_dsn, "pgjobs") == reference


def test_downgrade_to_base_removes_every_table_and_view(fresh_dsn: str, reference: str) -> None:
    assert set(TABLES + VIEWS) <= relations(fresh_dsn, "pgjobs")
    pgjobs_app = pgjobs.App(dsn=fresh_dsn)
    with psycopg.connect(fresh_dsn) as conn:
        pgjobs_app.task("some.task").enqueue(conn, x=1)
    _migrate.downgrade(fresh_dsn, "pgjobs", "base")
    assert relations(fresh_dsn, "pgjobs") == {"alembic_version"}
    _migrate.upgrade(fresh_dsn)
    assert snapshot(fresh_dsn, "pgjobs") == reference
    with psycopg.connect(fresh_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pgjobs.jobs").fetchone() == (0,)


def test_migrate_is_idempotent_and_keeps_data(fresh_dsn: str, reference: str) -> None:
    app = pgjobs.App(dsn=fresh_dsn)
    with psycopg.connect(fresh_dsn) as conn:
        job = app.task("some.task").enqueue(conn, x=1)
    _migrate.upgrade(fresh_dsn)
    _migrate.upgrade(fresh_dsn)
    assert snapshot(fresh_dsn, "pgjobs") == reference
    assert version_rows(fresh_dsn, "pgjobs.alembic_version") == [(_migrate.head_revision(),)]
    with psycopg.connect(fresh_dsn) as conn:
        assert conn.execute("SELECT args FROM pgjobs.jobs WHERE id = %s", (job.id,)).fetchone() \
            == ({"x": 1},)


MIGRATION_LOCK_KEY = "pgjobs.migrate:pgjobs"  # the advisory lock of migrations/env.py


def waiting_for_advisory_locks(conn: Conn) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    ).fetchone()
    return int(row[0]) if row else 0


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return process.returncode, out, err


def test_concurrent_migrate_commands_all_succeed(empty_dsn: str, reference: str) -> None:
    """Several `pgjobs migrate` processes (a deploy's replicas) start together on an empty
    database: all succeed and one correct schema results.

    A session holding the migration lock makes every run wait inside its migration
    transaction, then lets them all go at once, so they really do overlap.
    """
    runs = 2
    pgjobs_cli = str(Path(sys.executable).with_name("pgjobs"))
    env = {**os.environ, "PGJOBS_DATABASE_URL": empty_dsn, "PGJOBS_SCHEMA": "pgjobs"}
    with psycopg.connect(empty_dsn, autocommit=True) as gate:
        gate.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (MIGRATION_LOCK_KEY,))
        procs = [
            subprocess.Popen([pgjobs_cli, "migrate"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
            for _ in range(runs)
        ]
        try:
            while waiting_for_advisory_locks(gate) < runs:
                assert all(p.poll() is None for p in procs), \
                    "a migration finished while the migration lock was held"
                time.sleep(0.02)
        finally:
            gate.execute("SELECT pg_advisory_unlock_all()")
            outcomes = [finish(p) for p in procs]
    for code, out, err in outcomes:
        assert code == 0, err
        assert f"is at revision {_migrate.head_revision()}" in out
    assert snapshot(empty_dsn, "pgjobs") == reference
    assert version_rows(empty_dsn, "pgjobs.alembic_version") == [(_migrate.head_revision(),)]


def test_concurrent_migrations_in_threads_of_one_process(empty_dsn: str, reference: str) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def migrate(schema: str) -> None:
        try:
            barrier.wait(timeout=30)
            _migrate.upgrade(empty_dsn, schema)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(schema,))
               for schema in ("pgjobs", "pgjobs", "other", "other")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert snapshot(empty_dsn, "pgjobs") == reference
    assert snapshot(empty_dsn, "other") == reference


def psql_path() -> str:
    bindir = os.environ.get("PGJOBS_TEST_BINDIR")
    candidates = [Path(bindir) / "psql"] if bindir else []
    with contextlib.suppress(pgjobs.ConfigurationError):
        candidates.append(embedded_bindir() / "psql")
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("psql")
    if found is None:
        pytest.skip("no psql next to the server binaries or on PATH")
    return found


@pytest.mark.parametrize("schema", ["pgjobs", "Jobs_X"])
def test_offline_sql_applied_with_psql_gives_the_reference(
    empty_dsn: str, reference: str, schema: str, tmp_path: Path
) -> None:
    result = CliRunner().invoke(cli, ["--schema", schema, "migrate", "--sql"], env={
        "PGJOBS_DATABASE_URL": None})
    assert result.exit_code == 0, result.output
    assert "CREATE TABLE jobs" in result.stdout
    script = tmp_path / "pgjobs.sql"
    script.write_text(result.stdout)
    done = subprocess.run(
        [psql_path(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", empty_dsn, "-f", str(script)],
        capture_output=True, text=True, check=False, env={**os.environ, "LC_ALL": "C"},
    )
    assert done.returncode == 0, done.stderr
    assert snapshot(empty_dsn, schema) == reference
    assert revision(empty_dsn, schema) == _migrate.head_revision()
    # The schema it made is one `pgjobs migrate` recognises as current.
    _migrate.upgrade(empty_dsn, schema)
    assert snapshot(empty_dsn, schema) == reference


def test_offline_sql_from_head_is_empty() -> None:
    text = _migrate.upgrade_sql(start=_migrate.head_revision())
    assert "CREATE TABLE" not in text
    assert "Running upgrade" not in text


@pytest.mark.parametrize("schema", ["jobs_custom", "Jobs_X", "_x"])
def test_custom_schema(empty_dsn: str, reference: str, schema: str) -> None:
    _migrate.upgrade(empty_dsn, schema)
    assert snapshot(empty_dsn, schema) == reference
    assert snapshot(empty_dsn, "pgjobs") == ""  # nothing in the default schema
    assert revision(empty_dsn, schema) == _migrate.head_revision()
    assert revision(empty_dsn) is None
    _migrate.downgrade(empty_dsn, schema, "base")
    assert relations(empty_dsn, schema) == {"alembic_version"}


def test_two_schemas_in_one_database_are_independent(fresh_dsn: str, reference: str) -> None:
    _migrate.upgrade(fresh_dsn, "second")
    assert snapshot(fresh_dsn, "second") == reference
    _migrate.downgrade(fresh_dsn, "second", "base")
    assert relations(fresh_dsn, "second") == {"alembic_version"}
    assert snapshot(fresh_dsn, "pgjobs") == reference
    assert revision(fresh_dsn) == _migrate.head_revision()


def test_the_applications_own_alembic_version_is_untouched(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn) as conn:
        conn.execute(
            "CREATE TABLE public.alembic_version (version_num varchar(32) NOT NULL"
            " CONSTRAINT alembic_version_pkc PRIMARY KEY)"
        )
        conn.execute("INSERT INTO public.alembic_version VALUES ('app_rev_42')")
    _migrate.upgrade(empty_dsn)
    assert version_rows(empty_dsn, "public.alembic_version") == [("app_rev_42",)]
    assert version_rows(empty_dsn, "pgjobs.alembic_version") == [(_migrate.head_revision(),)]
    _migrate.downgrade(empty_dsn, "pgjobs", "base")
    assert version_rows(empty_dsn, "public.alembic_version") == [("app_rev_42",)]
    assert version_rows(empty_dsn, "pgjobs.alembic_version") == []


def test_migrate_ignores_the_callers_search_path(empty_dsn: str, reference: str) -> None:
    # A database whose search_path starts elsewhere still gets everything in pgjobs.
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA app")
        db = conn.execute("SELECT current_database()").fetchone()
        assert db is not None
        conn.execute(sql.SQL("ALTER DATABASE {} SET search_path = app, public").format(
            sql.Identifier(db[0])))
    _migrate.upgrade(empty_dsn)
    assert relations(empty_dsn, "app") == set()
    assert relations(empty_dsn, "public") == set()
    assert snapshot(empty_dsn, "pgjobs") == reference


def test_migrations_ship_inside_the_package_or_the_checkout() -> None:
    location = _migrate.script_location()
    assert (location / "env.py").is_file()
    assert {p.name for p in (location / "versions").glob("*.py")} >= {"0001_initial.py"}


def test_the_revision_the_worker_expects_is_the_head() -> None:
    from pgjobs.core import version as _revision

    assert _migrate.head_revision() == _revision.HEAD_REVISION
