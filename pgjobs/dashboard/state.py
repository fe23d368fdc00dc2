"""What every page and action of one dashboard shares: its database connections, its
statements, its settings, and the templates.

Database work runs in Starlette's thread pool on a small pool of autocommit connections
of the dashboard's own, opened at the first request (a mounted app gets no lifespan
events) and tested on checkout, so a restarted server is reconnected to at once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse

from ..core.errors import MissingDatabaseURL
from ..core.names import channel_for, check_schema
from ..db.queries import Queries
from ..db.statement import Query
from .render import environment, query_string
from .security import Auth, Csrf

T = TypeVar("T")
AnyConnection = psycopg.Connection[Any]

PRINCIPAL = "pgjobs.principal"
"""The scope key under which the guard leaves who is asking."""


class State:
    """One dashboard's connections, statements, settings and templates."""

    def __init__(self, dsn: str | None, schema: str, auth: Auth | None, read_only: bool,
                 secret: str | bytes | None, refresh: float, pool_size: int) -> None:
        self._dsn = dsn
        self.schema = check_schema(schema)
        self.queries = Queries(schema)
        self.channel = channel_for(schema)
        self.auth = auth
        self.read_only = read_only
        self.csrf = Csrf(secret)
        self.refresh = refresh
        self.pool_size = pool_size
        self.templates = environment()
        self._pool: ConnectionPool[AnyConnection] | None = None
        self._lock = threading.Lock()

    @property
    def dsn(self) -> str:
        dsn = self._dsn or os.environ.get("PGJOBS_DATABASE_URL")
        if not dsn:
            raise MissingDatabaseURL()
        return dsn

    def pool(self) -> ConnectionPool[AnyConnection]:
        with self._lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self.dsn, min_size=1, max_size=self.pool_size, open=True,
                    # Unprepared statements are planned with their parameters' values,
                    # so the dashboard's optional filters fold away (db/sql/dashboard.py).
                    kwargs={"autocommit": True, "prepare_threshold": None,
                            "application_name": "pgjobs dashboard"},
                    configure=_configure, check=ConnectionPool.check_connection,
                    name="pgjobs-dashboard", timeout=10)
            return self._pool

    def run_sync(self, work: Callable[[AnyConnection], T]) -> T:
        with self.pool().connection() as conn:
            return work(conn)

    async def run(self, work: Query[T] | Callable[[AnyConnection], T]) -> T:
        """A query (or a function of a connection) on a pooled connection, off the loop."""
        call = work.run if isinstance(work, Query) else work
        return await run_in_threadpool(self.run_sync, call)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def page(self, request: Request, template: str, status: int = 200,
             **context: Any) -> HTMLResponse:
        """Render ``template`` with what every page needs: the prefix the dashboard is
        mounted at (``root``), who is asking, the CSRF token, the settings."""
        principal = request.scope.get(PRINCIPAL) or ""
        html = self.templates.get_template(template).render(
            root=request.scope.get("root_path", ""), principal=principal,
            read_only=self.read_only, csrf=self.csrf.token(principal),
            refresh=self.refresh, qs=query_string, schema=self.schema, **context)
        return HTMLResponse(html, status_code=status)


def _configure(conn: AnyConnection) -> None:
    # A page that somehow runs long must not hold a connection (or a snapshot) for long.
    conn.execute("SET statement_timeout = '10s'")
