"""Every named query parses and plans against a migrated schema, without being executed.

Each statement is prepared with the server (PQprepare: parse and analyse, with parameter
types inferred by PostgreSQL alone) and then planned with EXPLAIN EXECUTE, which builds
the plan but runs nothing: no row is written and no notification is sent.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import pq, sql

from pgjobs.db import queries as _queries
from pgjobs.db import sql as texts
from pgjobs.ops import migrate as _migrate

CUSTOM_SCHEMA = "Jobs_Q"  # needs quoting: catches a schema name spliced in as text
PLACEHOLDER = re.compile(r"%%|%\((?P<name>[^)]+)\)(?P<format>[sbt])|%(?P<positional>[sbt])")


def to_dollar_params(query: str) -> tuple[str, list[str]]:
    """psycopg's ``%(name)s`` placeholders as PostgreSQL's ``$n`` (``%%`` becomes ``%``)."""
    names: list[str] = []

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "%%":
            return "%"
        if match.group("positional"):
            raise AssertionError("named queries use %(name)s placeholders only")
        name = match.group("name")
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return PLACEHOLDER.sub(replace, query), names


def test_placeholder_conversion() -> None:
    text, names = to_dollar_params(
        "SELECT %(a)s, %(b)s::int, %(a)s, format('%%s', %(c)b) -- 100%%")
    assert text == "SELECT $1, $2::int, $1, format('%s', $3) -- 100%"
    assert names == ["a", "b", "c"]


@pytest.fixture(scope="session")
def custom_dsn(databases: Any) -> str:
    """A database where pgjobs lives only in a custom schema."""
    dsn: str = databases.create(migrated=False)
    _migrate.upgrade(dsn, CUSTOM_SCHEMA)
    return dsn


@pytest.fixture(params=["pgjobs", CUSTOM_SCHEMA])
def target(request: pytest.FixtureRequest, shared_dsn: str) -> Iterator[
        tuple[psycopg.Connection[Any], _queries.Queries]]:
    schema: str = request.param
    dsn = shared_dsn if schema == "pgjobs" else request.getfixturevalue("custom_dsn")
    with psycopg.connect(dsn) as conn:
        yield conn, _queries.Queries(schema)
        conn.rollback()


NAMES = tuple(texts.statements())


def test_names_are_complete() -> None:
    queries = _queries.Queries("pgjobs")
    statements = texts.statements()
    for name, text in statements.items():
        assert isinstance(getattr(queries, name), sql.SQL), name
        if name not in texts.CATALOG_NAMES:
            assert "{schema}" in text, f"{name} must use the {{schema}} placeholder"
        else:
            assert "{schema}" not in text, f"{name} reads the catalog only"
    # Every statement has a typed attribute on Queries, and every attribute a statement.
    assert set(_queries.Queries.__annotations__) == set(statements)
    assert set(texts.CATALOG_NAMES) <= set(statements)
    # Names are entity-first: job_, batch_, ...
    entities = ("job_", "batch_", "enqueue_receipt_", "unique_key_", "limit_key_", "queue_",
                "worker_", "periodic_", "status_", "schema_", "task_")
    assert all(name.startswith(entities) for name in statements), statements.keys()


# COPY cannot be prepared; the enqueue tests run it.
@pytest.mark.parametrize("name", [n for n in NAMES if n != "job_copy"])
def test_query_parses_and_plans(
    name: str, target: tuple[psycopg.Connection[Any], _queries.Queries]
) -> None:
    conn, queries = target
    text, params = to_dollar_params(getattr(queries, name).as_string(conn))
    statement = f"pgjobs_test_{name}".encode()
    pgconn = conn.pgconn
    prepared = pgconn.prepare(statement, text.encode())
    assert prepared.status == pq.ExecStatus.COMMAND_OK, (
        f"{name}: {(prepared.error_message or b'').decode()}")
    described = pgconn.describe_prepared(statement)
    assert described.status == pq.ExecStatus.COMMAND_OK
    assert described.nparams == len(params)
    nulls = ", ".join(["NULL"] * len(params))
    plan = conn.execute(
        f"EXPLAIN EXECUTE pgjobs_test_{name}" + (f"({nulls})" if params else "")
    ).fetchall()
    assert plan, name
    conn.execute(f"DEALLOCATE pgjobs_test_{name}")


def test_sequence_name_resolves(target: tuple[psycopg.Connection[Any], _queries.Queries]) -> None:
    conn, queries = target
    row = conn.execute("SELECT to_regclass(%s)::text", (queries.sequence,)).fetchone()
    assert row is not None and row[0] is not None
