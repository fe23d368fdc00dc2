"""Which revision of pgjobs' schema a database has: read in one place, for the worker's
start-up check and for ``pgjobs migrate``."""

from __future__ import annotations

from .queries import Queries
from .statement import AnyAsyncConnection, AnyConnection, Query, scalar


def _table(q: Queries) -> Query[bool]:
    return Query(q.schema_version_table, {"schema": q.schema}, scalar, schema=q.schema)


def _revision(q: Queries) -> Query[str | None]:
    return Query(q.schema_revision, None, scalar, schema=q.schema)


def revision(conn: AnyConnection, q: Queries) -> str | None:
    """The revision applied to ``q.schema`` (None when pgjobs was never migrated there)."""
    return _revision(q).run(conn) if _table(q).run(conn) else None


async def arevision(aconn: AnyAsyncConnection, q: Queries) -> str | None:
    """:func:`revision` on an async connection."""
    return await _revision(q).arun(aconn) if await _table(q).arun(aconn) else None
