"""Helpers for testing code that uses pgjobs, against a real database.

    from pgjobs.testing import drain, assert_enqueued

    def test_signup(conn):
        signup(conn, "a@example.com")
        conn.commit()
        assert_enqueued(conn, send_welcome, email="a@example.com")
        assert drain(app)["succeeded"] == 1
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from .client.app import App
from .client.task import Task
from .worker.config import WorkerConfig
from .worker.lifecycle import Worker


def drain(app: App, **config: Any) -> Counter[str]:
    """Run every due job of ``app`` in this process until none is left, then return the
    outcomes by kind (``succeeded``, ``retry``, ``dead``, ...). Jobs scheduled for later
    (including retries with a backoff) stay queued. Keyword arguments are
    :class:`WorkerConfig` fields (``queues``, ``concurrency``, ``lease``, ...)."""
    return asyncio.run(adrain(app, **config))


async def adrain(app: App, **config: Any) -> Counter[str]:
    """:func:`drain` for async tests."""
    config.setdefault("listen", False)
    return await Worker(app, WorkerConfig(burst=True, **config)).run()


def assert_enqueued(
    conn: psycopg.Connection[Any], task: Task[..., Any] | str, /, **args: Any
) -> list[int]:
    """Assert that available jobs of ``task`` exist whose args contain ``args``; return
    their ids. Sees what ``conn`` sees, so uncommitted enqueues on it count."""
    name = task if isinstance(task, str) else task.name
    app_schema = task.app.config.schema if isinstance(task, Task) else "pgjobs"
    query = sql.SQL(
        "SELECT id FROM {}.jobs WHERE task = %s AND state = 'available' AND args @> %s "
        "ORDER BY id"
    ).format(sql.Identifier(app_schema))
    rows = conn.cursor(row_factory=tuple_row).execute(query, (name, Jsonb(args))).fetchall()
    if not rows:
        raise AssertionError(f"no available job of task {name!r} with args containing {args!r}")
    return [int(row[0]) for row in rows]
