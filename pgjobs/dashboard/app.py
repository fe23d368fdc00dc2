"""The dashboard as an ASGI application: :func:`create_app` builds it, to run standalone
(``pgjobs dashboard``) or to mount at a prefix inside another ASGI application.

A request passes the security headers, then the guard (who is asking; GET, HEAD and
POST only; no POST when read-only), then Starlette's router to a page (``pages``) or an
action (``actions``, which also checks the CSRF token).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg
from psycopg_pool import PoolTimeout
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from ..core.errors import ConfigurationError, MissingDatabaseURL, PgJobsError, SchemaNotReady
from . import actions, pages
from .security import Auth, SecurityHeaders, principal_of
from .state import PRINCIPAL, State

log = logging.getLogger("pgjobs.dashboard")

STATIC = Path(__file__).with_name("static")


class Dashboard:
    """The dashboard's ASGI application. Build it with :func:`create_app`; call
    :meth:`close` (or ``await aclose()``) when done, to close its connections."""

    def __init__(self, state: State) -> None:
        self.state = state
        router = Starlette(
            routes=[*pages.routes(), *actions.routes(),
                    Mount("/static", StaticFiles(directory=STATIC), name="static")],
            exception_handlers={PgJobsError: self._failed, PoolTimeout: self._failed,
                                psycopg.OperationalError: self._failed,
                                psycopg.errors.InsufficientPrivilege: self._failed,
                                HTTPException: self._http_error},
            lifespan=self._lifespan,
        )
        router.state.dashboard = state
        self._router = router
        self._app = SecurityHeaders(self._guard)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)

    def close(self) -> None:
        self.state.close()

    async def aclose(self) -> None:
        await run_in_threadpool(self.state.close)

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        yield
        await self.aclose()

    async def _guard(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._router(scope, receive, send)
            return
        if scope["type"] != "http":
            return  # no websockets here
        state = self.state
        principal = ("anonymous" if state.auth is None
                     else await principal_of(state.auth, Request(scope, receive)))
        refusal: Response | None = None
        if principal is None:
            challenge = getattr(state.auth, "challenge", None)
            refusal = (PlainTextResponse("sign in to see the pgjobs dashboard", 401,
                                         {"WWW-Authenticate": challenge}) if challenge
                       else PlainTextResponse("not allowed", 403))
        elif scope["method"] not in ("GET", "HEAD", "POST"):
            refusal = PlainTextResponse("method not allowed", 405, {"Allow": "GET, HEAD, POST"})
        elif scope["method"] == "POST" and state.read_only:
            refusal = PlainTextResponse("the dashboard is read-only: it takes no action", 403)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        scope[PRINCIPAL] = principal
        await self._router(scope, receive, send)

    async def _failed(self, request: Request, exc: Exception) -> Response:
        if isinstance(exc, SchemaNotReady | MissingDatabaseURL | ConfigurationError):
            status, title, message = 503, "The database is not ready", str(exc)
        elif isinstance(exc, PgJobsError):
            status, title, message = 400, "That request cannot be served", str(exc)
        elif isinstance(exc, psycopg.errors.InsufficientPrivilege):
            status, title = 403, "The database refused"
            message = (f"the dashboard's database role may not do this "
                       f"({exc.diag.message_primary}): connect it as the role `pgjobs roles` "
                       "creates for the dashboard, or run it read-only")
        else:
            log.warning("dashboard: database unavailable: %s", exc)
            status, title = 503, "The database cannot be reached"
            message = ("the dashboard tries again at the next request: is PostgreSQL "
                       "running, and is the URL right?")
        return self.state.page(request, "error.html", status, title=title, message=message)

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return self.state.page(request, "error.html", exc.status_code,
                               title=f"{exc.status_code}", message=exc.detail)


def create_app(dsn: str | None = None, schema: str = "pgjobs", *, auth: Auth | None,
               read_only: bool = False, secret: str | bytes | None = None,
               refresh: float = 5.0, pool_size: int = 4) -> Dashboard:
    """The pgjobs dashboard as an ASGI application.

    ``dsn`` defaults to ``PGJOBS_DATABASE_URL`` (read at the first request). ``auth`` is
    required, by keyword: a callable ``auth(request) -> str | None`` (sync or async) that
    returns who is asking, or None to refuse: 401 with a Basic challenge when the
    callable has a ``challenge`` attribute (as :class:`BasicAuth` does), else 403. Pass
    ``auth=None`` only when something in front of the dashboard checks every request.
    ``read_only`` hides every action and refuses every POST. ``secret`` keys the CSRF
    tokens: random per process unless given, so give the same one to every process that
    serves the dashboard. ``refresh``: seconds between live refreshes (0: off).
    ``pool_size``: most database connections.

    Mount it at a prefix: ``Mount("/jobs", app=create_app(auth=...))`` in Starlette,
    ``app.mount("/jobs", create_app(auth=...))`` in FastAPI (docs/dashboard.md).
    """
    if refresh < 0:
        raise ConfigurationError(f"refresh is seconds >= 0, not {refresh!r}")
    if pool_size < 1:
        raise ConfigurationError(f"pool_size must be at least 1, not {pool_size!r}")
    return Dashboard(State(dsn, schema, auth, read_only, secret, refresh, pool_size))
