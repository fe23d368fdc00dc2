"""pgjobs' settings in a Django project, and the one ``App`` built from them.

    PGJOBS = {
        "DATABASE": "default",   # the Django connection jobs are enqueued on
        "SCHEMA": "pgjobs",
        "POOL_SIZE": 4,          # any App setting, in capitals (pgjobs.Config)
    }

Every key is optional, and so is ``PGJOBS`` itself: by default pgjobs reaches the database
of ``DATABASES["default"]``, the one Django's ORM writes to, so that an enqueue on
Django's connection is in the same transaction as the ORM's writes. ``DSN`` names another
way to reach that same database for the worker and pgjobs' own pool (a direct connection
when Django goes through a pooler, say); it must be the same database.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from ...client.app import App
from ...client.config import Config
from ...core.errors import ConfigurationError

APP_SETTINGS = {f.name.upper(): f.name for f in fields(Config)}
KEYS = frozenset({"DATABASE", *APP_SETTINGS})


@dataclass(frozen=True)
class Settings:
    """``settings.PGJOBS`` read and checked: the Django alias, and the App's keywords."""

    database: str
    app: dict[str, Any]


def read(pgjobs: Mapping[str, Any] | None, databases: Mapping[str, Any]) -> Settings:
    """Check ``PGJOBS`` against ``DATABASES``; the DSN defaults to the alias's database."""
    given = dict(pgjobs or {})
    unknown = sorted(set(given) - KEYS)
    if unknown:
        raise ConfigurationError(
            f"unknown PGJOBS key(s) {', '.join(unknown)}; known: {', '.join(sorted(KEYS))}"
        )
    alias = given.pop("DATABASE", "default")
    if alias not in databases:
        raise ConfigurationError(
            f"PGJOBS['DATABASE'] is {alias!r}, which DATABASES does not define"
        )
    app = {APP_SETTINGS[key]: value for key, value in given.items()}
    if app.get("dsn") is None:
        app["dsn"] = dsn_of(databases[alias], alias)
    return Settings(alias, app)


def dsn_of(database: Mapping[str, Any], alias: str) -> str:
    """A libpq connection string for a ``DATABASES`` entry: its NAME, USER, PASSWORD, HOST
    and PORT, and those of its OPTIONS that libpq knows (sslmode, service, ...)."""
    engine = str(database.get("ENGINE", ""))
    if not engine.endswith("postgresql"):
        raise ConfigurationError(
            f"DATABASES[{alias!r}] uses {engine or 'no ENGINE'}: pgjobs lives in PostgreSQL "
            "(ENGINE django.db.backends.postgresql with psycopg 3), or set PGJOBS['DSN']"
        )
    known = {opt.keyword.decode() for opt in psycopg.pq.Conninfo.get_defaults()}
    params = {k: v for k, v in dict(database.get("OPTIONS") or {}).items() if k in known}
    for key, name in (("NAME", "dbname"), ("USER", "user"), ("PASSWORD", "password"),
                      ("HOST", "host"), ("PORT", "port")):
        if database.get(key):
            params[name] = str(database[key])
    return make_conninfo(**params)


_lock = threading.Lock()
_read: tuple[Settings, App] | None = None


def _project() -> tuple[Settings, App]:
    """``settings.PGJOBS`` read once per process, and the App built from it."""
    global _read
    with _lock:
        if _read is None:
            from django.conf import settings

            config = read(getattr(settings, "PGJOBS", None), settings.DATABASES)
            _read = config, App(**config.app)
        return _read


def get_app() -> App:
    """The project's App, built from ``settings.PGJOBS`` on first use (settings must be
    configured by then: any time after Django has started)."""
    return _project()[1]


def database_alias() -> str:
    """The Django connection (alias) that jobs are enqueued on."""
    return _project()[0].database
