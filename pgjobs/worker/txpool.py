"""The connections a worker lends its handlers for ``current_job().transaction()``.

Sync handlers run on the worker's thread pool, so each of its threads keeps one
connection of its own: no pool to check out from, nothing shared between threads. Async
handlers share a pool of at most ``concurrency`` connections (a running job holds at most
one). Everything is opened on first use and closed with the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

AnyConnection = psycopg.Connection[Any]


class TransactionPools:
    """Per-thread connections and an async pool, on the worker's database."""

    def __init__(self, dsn: Callable[[], str], size: int, prepare_threshold: int | None) -> None:
        self.dsn = dsn
        self.size = size
        self.kwargs: dict[str, Any] = {"prepare_threshold": prepare_threshold}
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: list[AnyConnection] = []
        self._alock = asyncio.Lock()
        self._apool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None

    def connection(self) -> AnyConnection:
        """This thread's connection (a new one if it has none, or its last one broke)."""
        conn: AnyConnection | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            conn = psycopg.connect(self.dsn(), application_name="pgjobs-handler", **self.kwargs)
            self._local.conn = conn
            with self._lock:
                self._opened.append(conn)
        return conn

    async def asynchronous(self) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        """The async pool (called from async handlers, on the worker's loop)."""
        async with self._alock:
            if self._apool is None:
                pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
                    self.dsn(), min_size=1, max_size=self.size,
                    kwargs={**self.kwargs, "application_name": "pgjobs-handler"},
                    name="pgjobs-transactions", open=False)
                await pool.open()
                self._apool = pool
            return self._apool

    async def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            with contextlib.suppress(psycopg.Error):
                conn.close()
        apool, self._apool = self._apool, None
        if apool is not None:
            await apool.close()
