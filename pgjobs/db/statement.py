"""``Query``: one statement, its parameters and how its rows are read, runnable on a sync
or an async connection alike, so no statement is written twice for the two.

Rows are decoded by column name (``named``), never by position, and on a cursor of their
own: a caller's connection may have any ``row_factory`` (dict_row is common).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Generic, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import BaseRowFactory, tuple_row

from ..core.errors import BatchFinished, LeaseLost, SchemaNotReady

T = TypeVar("T")
R = TypeVar("R")

AnyConnection = psycopg.Connection[Any]
AnyAsyncConnection = psycopg.AsyncConnection[Any]
Rows = list[Any]


@contextmanager
def translated_errors(schema: str) -> Iterator[None]:
    """Turn 'no such table' into an error that says to run ``pgjobs migrate``, and
    pgjobs' own SQLSTATEs (raised by its functions) into their typed errors."""
    try:
        yield
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName,
            psycopg.errors.UndefinedFunction) as exc:
        raise SchemaNotReady(schema) from exc
    except psycopg.Error as exc:
        if exc.sqlstate == "PJ001":
            diag = exc.diag
            raise BatchFinished(f"{diag.message_primary} ({diag.message_hint})") from exc
        if exc.sqlstate == "PJ002":
            raise LeaseLost(f"{exc.diag.message_primary}; {exc.diag.message_hint}") from exc
        raise


def named(cls: Callable[..., R]) -> BaseRowFactory[R]:
    """A row factory that builds ``cls`` (a dataclass) from each row by column name.

    The columns are matched to the fields once per result, so each row costs one call;
    a result without a column the class needs fails at once, naming it."""
    wanted = [f.name for f in fields(cls)] if is_dataclass(cls) else None

    def factory(cursor: Any) -> Callable[[Sequence[Any]], R]:
        names = [column.name for column in cursor.description or ()]
        if wanted is None:
            return lambda values: cls(**dict(zip(names, values, strict=True)))
        try:
            order = [names.index(name) for name in wanted]
        except ValueError:
            missing = sorted(set(wanted) - set(names))
            raise AssertionError(f"{cls.__name__}: the statement returns no {missing}") from None
        if order == list(range(len(names))):
            return lambda values: cls(*values)
        return lambda values: cls(*[values[i] for i in order])

    return factory


def records(cursor: Any) -> Callable[[Sequence[Any]], dict[str, Any]]:
    """A row factory of plain dicts, column name to value."""
    names = [column.name for column in cursor.description or ()]
    return lambda values: dict(zip(names, values, strict=True))


@dataclass(frozen=True, slots=True)
class Query(Generic[T]):
    """One statement ready to run: ``query.run(conn)`` or ``await query.arun(aconn)``.

    ``read`` turns the fetched rows and the row count into the result; ``rows`` decodes
    each row. Nothing here commits: the statement runs in whatever transaction the
    connection is in (an autocommit connection commits it alone)."""

    text: sql.SQL | sql.Composed
    params: Mapping[str, Any] | None
    read: Callable[[Rows, int], T]
    rows: BaseRowFactory[Any] = tuple_row
    schema: str = "pgjobs"
    """For error messages: the schema the statement was composed for."""

    def run(self, conn: AnyConnection) -> T:
        with translated_errors(self.schema):
            cursor = conn.cursor(row_factory=self.rows)
            cursor.execute(self.text, self.params)
            rows = cursor.fetchall() if cursor.description is not None else []
            return self.read(rows, cursor.rowcount)

    async def arun(self, aconn: AnyAsyncConnection) -> T:
        with translated_errors(self.schema):
            cursor = aconn.cursor(row_factory=self.rows)
            await cursor.execute(self.text, self.params)
            rows = await cursor.fetchall() if cursor.description is not None else []
            return self.read(rows, cursor.rowcount)


# -- readers: what a Query returns, from (rows, rowcount) ---------------------------------


def every(rows: Rows, count: int) -> Rows:
    """Every row."""
    return rows


def first(rows: Rows, count: int) -> Any:
    """The first row, or None."""
    return rows[0] if rows else None


def scalar(rows: Rows, count: int) -> Any:
    """The first column of the first row, or None."""
    return rows[0][0] if rows else None


def column(rows: Rows, count: int) -> list[Any]:
    """The first column of every row."""
    return [row[0] for row in rows]


def rowcount(rows: Rows, count: int) -> int:
    """How many rows the statement touched (0 when unknown)."""
    return max(count, 0)
