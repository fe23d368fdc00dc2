"""The caller's connection, whatever it came as: a psycopg connection, a SQLAlchemy
``Session`` / ``Connection`` (``AsyncSession`` / ``AsyncConnection`` for the async entry
points) or Django's connection, unwrapped to the psycopg 3 connection underneath.

pgjobs speaks psycopg 3 only (docs/architecture.md): a framework's session is not
abstracted over, it is opened up. The statement then runs on that very connection, in the
transaction the framework holds, so it commits or rolls back with the caller's own writes;
nothing here commits, and no other connection is opened.

SQLAlchemy and Django are never imported here unless the caller passed one of their
objects (the type's module says so), so ``import pgjobs`` stays free of both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypeVar, cast

import psycopg

from ..core.errors import UnsupportedConnection

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection as SAConnection
    from sqlalchemy.ext.asyncio import AsyncConnection as SAAsyncConnection
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session


class DjangoConnection(Protocol):
    """What pgjobs uses of Django's ``django.db.connection`` (a ``DatabaseWrapper``)."""

    vendor: str
    connection: Any

    def ensure_connection(self) -> None: ...


if TYPE_CHECKING:
    ConnectionLike: TypeAlias = (
        "psycopg.Connection[Any] | Session | SAConnection | DjangoConnection"
    )
    """Anything a sync entry point (``enqueue``, ``batch``, ``complete``...) runs on."""
    AsyncConnectionLike: TypeAlias = (
        "psycopg.AsyncConnection[Any] | AsyncSession | SAAsyncConnection"
    )
    """Anything an async entry point (``enqueue_async``, ``complete_async``...) runs on."""

C = TypeVar("C")

PSYCOPG_URL_HINT = (
    "pgjobs runs on psycopg 3: create the engine with a postgresql+psycopg:// URL "
    "(create_engine or create_async_engine alike)"
)


def sync_connection(conn: ConnectionLike | None) -> psycopg.Connection[Any] | None:
    """The psycopg connection to run on for ``conn`` (None stays None: the app's pool).

    A ``Session`` gives the connection of its current transaction, beginning one if it
    has none (as ``session.execute`` would); a ``Connection`` begins its transaction if
    it has none, so that ``conn.commit()`` commits what pgjobs wrote. Django's connection
    is connected if it was not; inside ``transaction.atomic()`` it is in that transaction.
    """
    if conn is None or isinstance(conn, psycopg.Connection):
        return conn
    kind = type(conn).__module__
    if isinstance(conn, psycopg.AsyncConnection) or kind.startswith("sqlalchemy.ext.asyncio"):
        raise UnsupportedConnection(
            f"{type(conn).__name__} is async: use the async twin of this call "
            "(enqueue_async, enqueue_many_async, complete_async)"
        )
    if kind.startswith("sqlalchemy."):
        return _sqlalchemy(conn)
    if kind.startswith("django.") and hasattr(conn, "ensure_connection"):
        return _django(cast(DjangoConnection, conn))
    raise UnsupportedConnection(
        f"cannot run on a {type(conn).__module__}.{type(conn).__qualname__}: pass a psycopg "
        "Connection, a SQLAlchemy Session or Connection, Django's connection, or None "
        "(the app's own pool, in a transaction of its own)"
    )


async def async_connection(
    aconn: AsyncConnectionLike | None,
) -> psycopg.AsyncConnection[Any] | None:
    """:func:`sync_connection` for the async entry points: a psycopg ``AsyncConnection``,
    or a SQLAlchemy ``AsyncSession`` / ``AsyncConnection`` (its transaction begun if it
    has none)."""
    if aconn is None or isinstance(aconn, psycopg.AsyncConnection):
        return aconn
    if not type(aconn).__module__.startswith("sqlalchemy.ext.asyncio"):
        hint = "use the sync call (enqueue, enqueue_many, complete)" if isinstance(
            aconn, psycopg.Connection) or type(aconn).__module__.startswith(
            ("sqlalchemy.", "django.")) else "pass a psycopg AsyncConnection"
        raise UnsupportedConnection(
            f"an async call cannot run on a {type(aconn).__qualname__}: {hint}, or a "
            "SQLAlchemy AsyncSession / AsyncConnection"
        )
    from sqlalchemy.ext.asyncio import AsyncSession

    if isinstance(aconn, AsyncSession):
        # Refused before the session connects or begins anything.
        _check_dialect(aconn.sync_session.get_bind().dialect)
        sa_conn = await aconn.connection()
    else:
        sa_conn = aconn
    _check_dialect(sa_conn.dialect)
    if not sa_conn.in_transaction():
        await sa_conn.begin()
    raw = await sa_conn.get_raw_connection()
    return _driver(raw.driver_connection, psycopg.AsyncConnection)


def _sqlalchemy(conn: Any) -> psycopg.Connection[Any]:
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session

    if isinstance(conn, Session):
        _check_dialect(conn.get_bind().dialect)  # before the session connects
        conn = conn.connection()  # the session's transaction, begun if it had none
    elif not isinstance(conn, Connection):
        raise UnsupportedConnection(
            f"a SQLAlchemy {type(conn).__qualname__} is not a Session or Connection: pass "
            "session or engine.connect()'s connection (async ones to the async calls)"
        )
    _check_dialect(conn.dialect)
    if not conn.in_transaction():
        conn.begin()
    return _driver(conn.connection.driver_connection, psycopg.Connection)


def _check_dialect(dialect: Any) -> None:
    if dialect.name != "postgresql" or dialect.driver != "psycopg":
        raise UnsupportedConnection(
            f"this SQLAlchemy engine uses {dialect.name}+{dialect.driver}; {PSYCOPG_URL_HINT}"
        )


def _django(wrapper: DjangoConnection) -> psycopg.Connection[Any]:
    if wrapper.vendor != "postgresql":
        raise UnsupportedConnection(
            f"Django's connection is to {wrapper.vendor}: pgjobs needs PostgreSQL with the "
            "psycopg 3 driver (ENGINE django.db.backends.postgresql, psycopg installed)"
        )
    wrapper.ensure_connection()
    return _driver(wrapper.connection, psycopg.Connection)


def _driver(raw: Any, kind: type[C]) -> C:
    if not isinstance(raw, kind):
        raise UnsupportedConnection(
            f"the driver connection is a {type(raw).__module__}.{type(raw).__qualname__}, "
            f"not psycopg 3's; {PSYCOPG_URL_HINT} (Django: install psycopg 3, not psycopg2)"
        )
    return raw
