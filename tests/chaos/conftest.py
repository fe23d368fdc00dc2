"""Fixtures of the chaos suite.

- Every test gets a random seed (``PGJOBS_CHAOS_SEED`` replays one); it and the logs of
  every worker the test started are printed when the test fails. Worker logs stay in the
  test's ``tmp_path`` (pytest keeps the last runs' folders).
- ``db``: a fresh migrated database with the chaos harness tables; the chaos app points
  at it. ``fleet`` starts `pgjobs worker` processes against it. ``batch_db`` adds the
  tables of the batch app (tests/workerapps/batchapp.py) and points that app at it too.
- ``private_server``: a PostgreSQL of its own for tests that restart the server or
  terminate its backends, so they never disturb tests running in parallel on the run's
  shared server. Skipped when ``PGJOBS_TEST_DSN`` names an outside server.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pgjobs.ops import migrate as _migrate
from pgjobs.ops.devserver import LocalServer
from tests.chaos.harness import Fleet
from tests.conftest import SERVER_ENV
from tests.helpers import harness_database
from tests.workerapps import batchapp, chaos

SEED = int(os.environ.get("PGJOBS_CHAOS_SEED") or random.SystemRandom().randrange(2**31))

_seed_key = pytest.StashKey[int]()
_fleets_key = pytest.StashKey[list[Fleet]]()


@pytest.fixture(autouse=True)
def _chaos_seed(request: pytest.FixtureRequest) -> int:
    request.node.stash[_seed_key] = SEED
    return SEED


@pytest.fixture
def rng(request: pytest.FixtureRequest, _chaos_seed: int) -> random.Random:
    """This test's random choices: the run's seed and the test's id."""
    return random.Random(f"{_chaos_seed}:{request.node.nodeid}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    seed = item.stash.get(_seed_key, None)
    if seed is not None:
        report.sections.append((
            "chaos seed",
            f"PGJOBS_CHAOS_SEED={seed} replays this test's random choices "
            f"(scale: {os.environ.get('PGJOBS_CHAOS_SCALE', 'short')})",
        ))
    for fleet in item.stash.get(_fleets_key, []):
        report.sections.append(("worker logs", fleet.report() or "(no workers started)"))


def _install_harness(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(chaos.HARNESS)


def _fleet(request: pytest.FixtureRequest, tmp_path: Path, dsn: str) -> Fleet:
    fleet = Fleet(dsn, tmp_path / "logs")
    request.node.stash.setdefault(_fleets_key, []).append(fleet)
    return fleet


@pytest.fixture
def db(fresh_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh database with the harness; the chaos app (in this process) points at it."""
    _install_harness(fresh_dsn)
    monkeypatch.setenv("PGJOBS_DATABASE_URL", fresh_dsn)
    yield fresh_dsn
    chaos.app.close()


@pytest.fixture
def batch_db(db: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    yield from harness_database(db, monkeypatch, batchapp.HARNESS, batchapp.app)


@pytest.fixture
def fleet(db: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    workers = _fleet(request, tmp_path, db)
    yield workers
    workers.stop_all()


# -- a server of the test's own ------------------------------------------------------------


@dataclass
class PrivateServer:
    server: LocalServer
    template: str

    @property
    def admin_dsn(self) -> str:
        return self.server.url

    def create_db(self) -> str:
        name = f"chaos_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(self.template)))
        return self.server.url_for(name)

    def restart(self) -> None:
        """A crash and recovery: `pg_ctl stop -m immediate`, then start on the same port."""
        self.server.restart(mode="immediate")

    def terminate(self, dbname_dsn: str, application_like: str = "%") -> int:
        """pg_terminate_backend on every backend of that database whose application_name
        matches; returns how many."""
        dbname = psycopg.conninfo.conninfo_to_dict(dbname_dsn)["dbname"]
        with psycopg.connect(self.admin_dsn, autocommit=True) as admin:
            rows = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND application_name LIKE %s AND pid <> pg_backend_pid()",
                (dbname, application_like),
            ).fetchall()
        return len(rows)


@pytest.fixture(scope="session")
def private_server() -> Iterator[PrivateServer]:
    if not os.environ.get(SERVER_ENV):
        pytest.skip(
            "PGJOBS_TEST_DSN names an outside server: this test restarts PostgreSQL "
            "(pg_ctl restart -m immediate) and terminates backends, which the suite only "
            "does to a server it started itself"
        )
    folder = Path(tempfile.mkdtemp(prefix="pgjobs-chaos-pg-"))
    bindir = os.environ.get("PGJOBS_TEST_BINDIR")
    # fsync off is safe here (the machine does not crash, only PostgreSQL does); commits
    # stay synchronous so that a committed job survives an immediate restart.
    server = LocalServer(
        folder / "data", bindir=Path(bindir) if bindir else None,
        settings={"fsync": "off", "full_page_writes": "off"},
    )
    try:
        server.start()
        template = "chaos_template"
        with psycopg.connect(server.url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(template)))
        template_dsn = make_conninfo(server.url, dbname=template)
        _migrate.upgrade(template_dsn, "pgjobs")
        _install_harness(template_dsn)
        yield PrivateServer(server, template)
    finally:
        server.destroy()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def private_db(private_server: PrivateServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    dsn = private_server.create_db()
    monkeypatch.setenv("PGJOBS_DATABASE_URL", dsn)
    yield dsn
    chaos.app.close()


@pytest.fixture
def private_fleet(
    private_db: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Fleet]:
    workers = _fleet(request, tmp_path, private_db)
    yield workers
    workers.stop_all()
