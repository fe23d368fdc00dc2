"""Who may see the dashboard, and what every response carries.

- **Auth** is a callable of the request that returns who is asking (any non-empty
  string) or None to refuse. ``BasicAuth`` is the standalone one (HTTP Basic, compared
  in constant time); a host application passes its own (a session, a header set by its
  proxy, ``request.user``...). The callable may be sync or async.
- **CSRF**: every state-changing request is a POST carrying ``csrf``, an HMAC of the
  principal under the dashboard's secret: another site can make a browser send the
  credentials, but not read the token. A POST whose ``Origin`` is another host is
  refused too.
- **Headers** on every response: a Content-Security-Policy that allows no inline script
  or style and no framing, ``X-Frame-Options: DENY``, ``nosniff``, no referrer to other
  sites, and no caching.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import inspect
import ipaddress
import os
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..core.errors import ConfigurationError

Auth = Callable[[Request], "str | Awaitable[str | None] | None"]
"""``auth(request) -> principal or None``, sync or async."""

USER_ENV = "PGJOBS_DASHBOARD_USER"
PASSWORD_ENV = "PGJOBS_DASHBOARD_PASSWORD"

HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy",
     b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
     b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
)


class BasicAuth:
    """HTTP Basic against one user name and password, compared in constant time (both
    are always compared, so a wrong name takes as long as a wrong password)."""

    challenge = 'Basic realm="pgjobs dashboard", charset="UTF-8"'

    def __init__(self, user: str, password: str) -> None:
        if not user or not password:
            raise ConfigurationError(
                f"the dashboard needs a user name and a password: set {USER_ENV} and "
                f"{PASSWORD_ENV}")
        self._user = user.encode()
        self._password = password.encode()
        self.user = user

    @classmethod
    def from_env(cls) -> BasicAuth | None:
        """From PGJOBS_DASHBOARD_USER and PGJOBS_DASHBOARD_PASSWORD; None when unset."""
        user, password = os.environ.get(USER_ENV), os.environ.get(PASSWORD_ENV)
        if not user and not password:
            return None
        return cls(user or "", password or "")

    def __call__(self, request: Request) -> str | None:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return None
        same_user = hmac.compare_digest(user, self._user)
        same_password = hmac.compare_digest(password, self._password)
        return self.user if sep and same_user and same_password else None


async def principal_of(auth: Auth, request: Request) -> str | None:
    """Run ``auth`` (sync or async) for ``request``."""
    found = auth(request)
    if inspect.isawaitable(found):
        found = await found
    if found is not None and (not isinstance(found, str) or not found):
        raise ConfigurationError(
            f"the dashboard's auth callable must return a non-empty string (who is asking) "
            f"or None (refuse), not {found!r}")
    return found


class Csrf:
    """Tokens bound to the principal, under a secret (random per process unless given:
    give the same ``secret`` to every process that serves one dashboard)."""

    def __init__(self, secret: str | bytes | None = None) -> None:
        if isinstance(secret, str):
            secret = secret.encode()
        self._key = secret or secrets.token_bytes(32)

    def token(self, principal: str) -> str:
        return hmac.new(self._key, b"csrf:" + principal.encode(), hashlib.sha256).hexdigest()

    def valid(self, principal: str, token: Any) -> bool:
        return isinstance(token, str) and hmac.compare_digest(token, self.token(principal))


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another host (no Origin
    header, as from curl or an old browser, is left to the CSRF token)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1] == host


class SecurityHeaders:
    """ASGI middleware: the security headers on every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in HEADERS if n not in names]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, with_headers)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or 'localhost') only listens on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
