"""The `pgjobs` command line: migrate, its environment twins and errors, and `pgjobs dev`."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import psycopg
import pytest
from click.testing import CliRunner, Result

import pgjobs
from pgjobs.ops import migrate as _migrate
from pgjobs.ops.cli import cli, main
from pgjobs.ops.devserver import LocalServer, free_port

# Options that are not settings and need no environment twin.
NO_TWIN = {"--help", "--version", "--yes"}


def run(*args: str, **env: str | None) -> Result:
    """`pgjobs ARGS` in-process, with PGJOBS_DATABASE_URL unset unless given."""
    env.setdefault("PGJOBS_DATABASE_URL", None)
    env.setdefault("PGJOBS_SCHEMA", None)
    return CliRunner().invoke(cli, list(args), env=env, prog_name="pgjobs")


def has_table(dsn: str, name: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
    return bool(row and row[0])


# -- errors without a database -----------------------------------------------------------


def test_migrate_without_a_dsn_exits_1_with_one_line_naming_pgjobs_dev() -> None:
    result = run("migrate")
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: no database URL")
    assert "PGJOBS_DATABASE_URL" in lines[0]
    assert "`pgjobs dev start`" in lines[0]


def test_the_console_script_entry_point_without_a_dsn(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `pgjobs = pgjobs.ops.cli:main` (the wheel's entry point, see test_packaging), in-process.
    monkeypatch.delenv("PGJOBS_DATABASE_URL", raising=False)
    monkeypatch.setattr(sys, "argv", ["pgjobs", "migrate"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("Error: no database URL")
    assert len(err.strip().splitlines()) == 1
    assert "`pgjobs dev start`" in err


def test_an_unreachable_database_is_one_line_not_a_traceback() -> None:
    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing?connect_timeout=5"
    result = run("--dsn", dsn, "migrate")
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot reach the database" in lines[0]


@pytest.mark.parametrize("schema", ["a;b", "pg_x", "1abc", "x" * 51, "bad-name", "'"])
def test_invalid_schema_is_rejected(schema: str) -> None:
    result = run("--schema", schema, "migrate", "--sql")
    assert result.exit_code == 2
    assert "Invalid value for --schema" in result.stderr
    assert "CREATE" not in result.stdout
    from_env = run("migrate", "--sql", PGJOBS_SCHEMA=schema)
    assert from_env.exit_code == 2
    assert "Invalid value for --schema" in from_env.stderr


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0
    assert pgjobs.__version__ in result.stdout


# -- help and environment twins -------------------------------------------------------------


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[
        tuple[tuple[str, ...], click.Command]]:
    yield path, group
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


COMMANDS = list(_commands(cli))


def test_the_commands_exist() -> None:
    paths = {" ".join(path) for path, _ in COMMANDS}
    assert {"", "migrate", "dev", "dev start", "dev stop", "dev url", "dev destroy"} <= paths


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) or "pgjobs"
                                                            for p, _ in COMMANDS])
def test_every_option_has_an_env_twin_shown_in_help(
    path: tuple[str, ...], command: click.Command
) -> None:
    result = run(*path, "--help")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Usage: pgjobs")
    help_text = " ".join(result.stdout.split())  # undo line wrapping
    for param in command.params:
        if not isinstance(param, click.Option) or set(param.opts) & NO_TWIN:
            continue
        envvar = param.envvar
        assert isinstance(envvar, str) and envvar.startswith("PGJOBS_"), param.opts
        assert param.show_envvar, param.opts
        assert f"env var: {envvar}" in help_text, (param.opts, envvar)


def test_migrate_help_names_its_env_twins() -> None:
    help_text = run("migrate", "--help").stdout
    for envvar in ("PGJOBS_MIGRATE_SQL", "PGJOBS_MIGRATE_DOWNGRADE", "PGJOBS_MIGRATE_FROM"):
        assert envvar in help_text
    top = run("--help").stdout
    assert "PGJOBS_DATABASE_URL" in top and "PGJOBS_SCHEMA" in top


# -- migrate against a database -------------------------------------------------------------


def test_migrate_with_dsn_option(empty_dsn: str) -> None:
    result = run("--dsn", empty_dsn, "migrate")
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"pgjobs schema 'pgjobs' is at revision {_migrate.head_revision()}\n")
    assert has_table(empty_dsn, "pgjobs.jobs")
    again = run("--dsn", empty_dsn, "migrate")  # idempotent
    assert again.exit_code == 0, again.output


def test_migrate_with_env_vars(empty_dsn: str) -> None:
    result = run("migrate", PGJOBS_DATABASE_URL=empty_dsn, PGJOBS_SCHEMA="from_env")
    assert result.exit_code == 0, result.output
    assert "'from_env'" in result.stdout
    assert has_table(empty_dsn, "from_env.jobs")
    assert not has_table(empty_dsn, "pgjobs.jobs")
    # The option wins over the environment.
    result = run("--schema", "from_flag", "migrate", PGJOBS_DATABASE_URL=empty_dsn,
                 PGJOBS_SCHEMA="from_env")
    assert result.exit_code == 0, result.output
    assert has_table(empty_dsn, "from_flag.jobs")


def test_migrate_downgrade_base(fresh_dsn: str) -> None:
    assert has_table(fresh_dsn, "pgjobs.jobs")
    result = run("--dsn", fresh_dsn, "migrate", "--downgrade", "base")
    assert result.exit_code == 0, result.output
    assert result.stdout == "pgjobs schema 'pgjobs' downgraded to base\n"
    assert not has_table(fresh_dsn, "pgjobs.jobs")
    with psycopg.connect(fresh_dsn) as conn:
        assert _migrate.current_revision(conn, "pgjobs") is None
    result = run("migrate", PGJOBS_DATABASE_URL=fresh_dsn)
    assert result.exit_code == 0, result.output
    assert has_table(fresh_dsn, "pgjobs.jobs")


def test_migrate_downgrade_to_an_unknown_revision_is_one_line(fresh_dsn: str) -> None:
    result = run("--dsn", fresh_dsn, "migrate", "--downgrade", "nope")
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "migration failed" in result.stderr
    assert has_table(fresh_dsn, "pgjobs.jobs")


def test_migrate_sql_needs_no_database() -> None:
    result = run("migrate", "--sql")
    assert result.exit_code == 0, result.output
    assert "CREATE TABLE jobs" in result.stdout
    assert 'CREATE SCHEMA "pgjobs"' in result.stdout
    assert result.stdout.rstrip().endswith("COMMIT;")
    custom = run("--schema", "Jobs_X", "migrate", "--sql")
    assert 'CREATE SCHEMA "Jobs_X"' in custom.stdout
    assert "pgjobs.migrate:Jobs_X" in custom.stdout  # its own migration lock
    from_env = run("migrate", PGJOBS_MIGRATE_SQL="1")
    assert from_env.exit_code == 0 and "CREATE TABLE jobs" in from_env.stdout


def test_migrate_sql_from_a_revision_prints_only_later_revisions() -> None:
    head = _migrate.head_revision()
    result = run("migrate", "--sql", "--from", head)
    assert result.exit_code == 0, result.output
    assert "CREATE TABLE" not in result.stdout


@pytest.mark.parametrize(
    "args", [("migrate", "--sql", "--downgrade", "base"), ("migrate", "--from", "0001")])
def test_migrate_usage_errors(args: tuple[str, ...], empty_dsn: str) -> None:
    result = run("--dsn", empty_dsn, *args)
    assert result.exit_code == 2
    assert "Usage:" in result.stderr
    assert not has_table(empty_dsn, "pgjobs.jobs")


# -- pgjobs dev ------------------------------------------------------------------------------


@pytest.fixture
def dev_dir(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "dev"
    yield folder
    bindir = os.environ.get("PGJOBS_TEST_BINDIR")
    LocalServer(folder / "data", bindir=Path(bindir) if bindir else None).destroy()


def dev_env(**extra: str | None) -> dict[str, Any]:
    bindir = os.environ.get("PGJOBS_TEST_BINDIR")
    return {"PGJOBS_DEV_BINDIR": bindir, "PGJOBS_DEV_DIR": None, **extra}


@pytest.mark.slow
def test_dev_start_url_stop(dev_dir: Path) -> None:
    folder = str(dev_dir)
    assert run("dev", "url", "--dir", folder, **dev_env()).exit_code == 1
    started = run("dev", "start", "--dir", folder, **dev_env())
    assert started.exit_code == 0, started.output
    url = started.stdout.strip()
    assert url.startswith("postgresql://postgres@127.0.0.1:")
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    # `pgjobs migrate` against it, as the dev group's help suggests.
    migrated = run("migrate", PGJOBS_DATABASE_URL=url)
    assert migrated.exit_code == 0, migrated.output
    assert has_table(url, "pgjobs.jobs")
    # url by option and by its env twin; start again is a no-op with the same URL.
    assert run("dev", "url", "--dir", folder, **dev_env()).stdout.strip() == url
    assert run("dev", "url", **dev_env(PGJOBS_DEV_DIR=folder)).stdout.strip() == url
    assert run("dev", "start", "--dir", folder, **dev_env()).stdout.strip() == url

    stopped = run("dev", "stop", "--dir", folder, **dev_env())
    assert stopped.exit_code == 0, stopped.output
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=5)
    gone = run("dev", "url", "--dir", folder, **dev_env())
    assert gone.exit_code == 1
    assert "not running: run `pgjobs dev start`" in gone.stderr

    # The data stays for the next start: the pgjobs schema is still there.
    restarted = run("dev", "start", "--dir", folder, **dev_env())
    assert restarted.exit_code == 0, restarted.output
    assert has_table(restarted.stdout.strip(), "pgjobs.jobs")
    destroyed = run("dev", "destroy", "--dir", folder, "--yes", **dev_env())
    assert destroyed.exit_code == 0, destroyed.output
    assert not (dev_dir / "data").exists()


def test_a_supervised_process_gets_every_worker_option_back() -> None:
    from pgjobs.ops.cli.worker import SUPERVISOR_ONLY, _child_flags, worker

    given = ["--app", "shop.tasks:app", "--processes", "3", "--queues", "mail,sms",
             "--concurrency", "7", "--no-listen", "--burst", "--lease", "12.5",
             "--summary-interval", "0", "--retention-dead", "never",
             "--retention-succeeded", "2h"]
    parent = worker.make_context("worker", list(given))
    env: dict[str, str] = {}
    flags = _child_flags(parent, env)
    assert "--processes" not in flags and "--start-timeout" not in flags
    child = worker.make_context("worker", flags)
    assert child.params["processes"] is None  # the child is an ordinary worker
    expected = {k: v for k, v in parent.params.items() if k not in SUPERVISOR_ONLY}
    child.params = {k: v for k, v in child.params.items() if k not in SUPERVISOR_ONLY}
    dsn_options = {k for k in expected if "dsn" in k}
    for name in dsn_options:
        expected.pop(name)
        child.params.pop(name)
    assert child.params == expected
    assert child.params["listen"] is False and child.params["burst"] is True
    assert child.params["retention_dead"] is None  # never, not the default week
    assert child.params["retention_succeeded"] == 7200.0


# -- worker options, generated from the settings dataclasses -------------------------------


def test_every_worker_setting_is_an_option_with_its_default_help_and_env_twin() -> None:
    from dataclasses import fields

    from pgjobs.ops.cli.common import Logs
    from pgjobs.ops.cli.worker import Process, worker
    from pgjobs.ops.settings import build, field_docs

    by_name = {p.name: p for p in worker.params if isinstance(p, click.Option)}
    for cls in (pgjobs.WorkerConfig, Process, Logs):
        docs = field_docs(cls)
        for item in fields(cls):
            option = by_name[item.name]
            assert option.opts[0] == "--" + item.name.replace("_", "-")
            assert option.envvar == "PGJOBS_" + item.name.upper()
            assert option.help == docs[item.name].replace("``", "") and option.help
    # No option given: the command builds exactly the dataclasses' defaults.
    ctx = worker.make_context("worker", ["--app", "x:y"])
    assert build(pgjobs.WorkerConfig, {k: v for k, v in ctx.params.items()
                                       if k in {f.name for f in fields(pgjobs.WorkerConfig)}}
                 ) == pgjobs.WorkerConfig()


@pytest.mark.parametrize(("flag", "value", "says"), [
    ("--concurrency", "0", "concurrency must be an int >= 1"),
    ("--lease", "0.5", "lease must be at least 1 second"),
    ("--processes", "0", "processes must be at least 1"),
])
def test_a_bad_worker_option_is_a_usage_error_naming_its_flag(
    flag: str, value: str, says: str, fresh_dsn: str
) -> None:
    result = run("worker", "--app", "tests.workerapps.basic:app", flag, value,
                 PGJOBS_DATABASE_URL=fresh_dsn)
    assert result.exit_code == 2, result.output
    assert flag in result.stderr and says in result.stderr


def test_every_worker_option_is_in_the_worker_docs() -> None:
    from pgjobs.ops.cli.worker import worker

    table = (Path(__file__).resolve().parent.parent / "docs" / "worker.md").read_text()
    for option in worker.params:
        if isinstance(option, click.Option) and option.name != "help":
            assert f"| `{option.opts[0]}" in table, f"{option.opts[0]} is not in docs/worker.md"
            assert f"`{option.envvar}`" in table, option.envvar
