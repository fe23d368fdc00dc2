"""SQLAlchemy sessions and connections as the caller's transaction: enqueue, bulk enqueue,
batches and fenced completion run on the session's own psycopg connection, commit or
roll back with it, and open no other connection; other drivers are refused."""

from __future__ import annotations

import asyncio
import types
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import pgjobs
from pgjobs.testing import adrain, drain
from tests.helpers import query, scalar


class Base(DeclarativeBase):
    pass


class Signup(Base):
    __tablename__ = "signups"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str]


def sa_url(dsn: str) -> sa.URL:
    """The test database as a ``postgresql+psycopg://`` URL (sync and async engines)."""
    parts = conninfo_to_dict(dsn)
    return sa.URL.create("postgresql+psycopg", username=parts.get("user"),
                         password=parts.get("password"), host=parts.get("host"),
                         port=int(parts["port"]) if parts.get("port") else None,
                         database=parts.get("dbname"))


@pytest.fixture
def engine(fresh_dsn: str) -> Iterator[sa.Engine]:
    with psycopg.connect(fresh_dsn, autocommit=True) as c:
        c.execute("CREATE TABLE signups (id serial PRIMARY KEY, email text NOT NULL)")
        c.execute("CREATE TABLE effects (job_id bigint PRIMARY KEY, email text NOT NULL)")
    eng = sa.create_engine(sa_url(fresh_dsn))
    yield eng
    eng.dispose()


def tasks(app: pgjobs.App, engine: sa.Engine
          ) -> tuple[pgjobs.Task[..., Any], pgjobs.Task[..., Any]]:
    """A welcome mail whose effect and completion share one session's transaction, and a
    plain task for batches."""

    @app.job(name="welcome")
    def welcome(email: str) -> None:
        with Session(engine) as session:
            session.execute(sa.text("INSERT INTO effects VALUES (:id, :email)"),
                            {"id": pgjobs.current_job().id, "email": email})
            pgjobs.current_job().complete(session, result=email)
            session.commit()

    @app.job(name="noop")
    def noop(n: int) -> int:
        return n

    return welcome, noop


def jobs_of(dsn: str) -> list[tuple[Any, ...]]:
    return query(dsn, "SELECT task, state, result FROM pgjobs.jobs ORDER BY id")


def test_a_rolled_back_session_leaves_no_job(
    fresh_app: pgjobs.App, engine: sa.Engine, fresh_dsn: str
) -> None:
    welcome, noop = tasks(fresh_app, engine)
    with Session(engine) as session:
        session.add(Signup(email="a@example.com"))
        session.flush()
        welcome.enqueue(session, email="a@example.com")
        noop.enqueue_many(session, [{"n": 1}, {"n": 2}])
        fresh_app.batch(session).enqueue(noop, n=3)
        # One connection: the session's; pgjobs opened none of its own.
        assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]
        assert fresh_app._pool is None
        session.rollback()
    assert scalar(fresh_dsn, "SELECT count(*) FROM pgjobs.jobs") == 0
    assert scalar(fresh_dsn, "SELECT count(*) FROM pgjobs.batches") == 0
    assert scalar(fresh_dsn, "SELECT count(*) FROM signups") == 0


def test_a_committed_session_runs_its_jobs(
    fresh_app: pgjobs.App, engine: sa.Engine, fresh_dsn: str
) -> None:
    welcome, noop = tasks(fresh_app, engine)
    with Session(engine) as session:
        # Nothing executed yet: enqueue begins the session's transaction itself.
        welcome.enqueue(session, email="b@example.com")
        session.add(Signup(email="b@example.com"))
        batch = fresh_app.batch(session, description="two")
        batch.enqueue_many(noop, [{"n": 1}, {"n": 2}])
        assert scalar(fresh_dsn, "SELECT count(*) FROM pgjobs.jobs") == 0  # not yet
        session.commit()
    assert drain(fresh_app)["succeeded"] == 3
    assert jobs_of(fresh_dsn) == [("welcome", "succeeded", "b@example.com"),
                                  ("noop", "succeeded", 1), ("noop", "succeeded", 2)]
    assert query(fresh_dsn, "SELECT email FROM effects") == [("b@example.com",)]
    assert fresh_app.batch_status(None, batch.id).succeeded_all


def test_a_connection_begins_its_transaction_and_commits_with_it(
    fresh_app: pgjobs.App, engine: sa.Engine, fresh_dsn: str
) -> None:
    _, noop = tasks(fresh_app, engine)
    with engine.connect() as conn:
        noop.enqueue(conn, n=1)
        assert conn.in_transaction()  # so conn.commit() below commits the job
        conn.commit()
    with engine.connect() as conn:
        fresh_app.enqueue(conn, "noop", n=2)
        # closed without commit: rolled back, as anything else on it would be
    assert [r[0] for r in query(fresh_dsn, "SELECT args->>'n' FROM pgjobs.jobs")] == ["1"]


def test_async_sessions_and_connections(fresh_app: pgjobs.App, engine: sa.Engine,
                                        fresh_dsn: str) -> None:
    @fresh_app.job(name="welcome_async")
    async def welcome_async(email: str) -> None:
        async with AsyncSession(aengine) as session:
            await session.execute(sa.text("INSERT INTO effects VALUES (:id, :email)"),
                                  {"id": pgjobs.current_job().id, "email": email})
            await pgjobs.current_job().complete_async(session)
            await session.commit()

    aengine = create_async_engine(sa_url(fresh_dsn))

    async def scenario() -> None:
        try:
            async with AsyncSession(aengine) as session:
                await welcome_async.enqueue_async(session, email="rolled@example.com")
                session.add(Signup(email="rolled@example.com"))
                await session.rollback()
                await welcome_async.enqueue_async(session, email="c@example.com")
                await welcome_async.enqueue_many_async(session, [{"email": "d@example.com"}])
                session.add(Signup(email="c@example.com"))
                assert aengine.pool.checkedout() == 1  # type: ignore[attr-defined]
                await session.commit()
            async with aengine.connect() as conn:
                await welcome_async.enqueue_async(conn, email="e@example.com")
                await conn.commit()
            assert (await adrain(fresh_app))["succeeded"] == 3
        finally:
            await aengine.dispose()
            await fresh_app.aclose()

    asyncio.run(scenario())
    assert sorted(r[0] for r in query(fresh_dsn, "SELECT email FROM effects")) == [
        "c@example.com", "d@example.com", "e@example.com"]
    assert query(fresh_dsn, "SELECT email FROM signups") == [("c@example.com",)]


FAKE_DBAPI = types.SimpleNamespace(paramstyle="pyformat", __version__="99.0")
"""Enough of a DB-API module for SQLAlchemy to build an engine that never connects."""


@pytest.mark.parametrize("url", ["postgresql+pg8000://u@h/db", "sqlite://"])
def test_another_driver_is_refused_with_what_to_use(app: pgjobs.App, url: str) -> None:
    engine = sa.create_engine(url, **({"module": FAKE_DBAPI} if "pg8000" in url else {}))
    _, noop = tasks(app, engine)
    with Session(engine) as session, pytest.raises(
        pgjobs.UnsupportedConnection, match=r"uses (postgresql\+pg8000|sqlite\+pysqlite); "
        r".*postgresql\+psycopg://"
    ):
        noop.enqueue(session, n=1)


def test_another_async_driver_is_refused_with_what_to_use(app: pgjobs.App) -> None:
    engine = create_async_engine("postgresql+asyncpg://u@h/db", module=FAKE_DBAPI)
    _, noop = tasks(app, engine.sync_engine)

    async def enqueue() -> None:
        async with AsyncSession(engine) as session:
            await noop.enqueue_async(session, n=1)

    with pytest.raises(pgjobs.UnsupportedConnection, match=r"postgresql\+psycopg://"):
        asyncio.run(enqueue())


def test_sync_and_async_calls_refuse_each_others_sessions(app: pgjobs.App,
                                                          engine: sa.Engine) -> None:
    _, noop = tasks(app, engine)
    aengine = create_async_engine(engine.url)
    with pytest.raises(pgjobs.UnsupportedConnection, match="enqueue_async"):
        noop.enqueue(AsyncSession(aengine), n=1)
    with Session(engine) as session, pytest.raises(pgjobs.UnsupportedConnection,
                                                   match="use the sync call"):
        asyncio.run(noop.enqueue_async(session, n=1))  # type: ignore[arg-type]
    with pytest.raises(pgjobs.UnsupportedConnection, match="pass a psycopg Connection"):
        noop.enqueue(object(), n=1)  # type: ignore[arg-type]
