"""Apply, print and revert pgjobs' alembic revisions (plain SQL, schema-local history)."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any, TextIO

import psycopg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from ..core.errors import ConfigurationError
from ..db import schema as schema_revision
from ..db.queries import Queries

# alembic runs env.py through a process-wide proxy (``alembic.context``), so two commands
# running at once in one process would share it. Across processes, env.py's advisory lock
# serialises concurrent migrations; within a process, this lock does.
_ALEMBIC = threading.Lock()


def script_location() -> Path:
    """Where the revisions are: inside the wheel, or the checkout's migrations/ folder."""
    package = Path(__file__).resolve().parent.parent  # pgjobs/
    for candidate in (package / "_migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise ConfigurationError(
        "pgjobs' migrations are missing from this installation; reinstall pgjobs"
    )


def _config(schema: str, output: TextIO | None = None) -> Config:
    cfg = Config(output_buffer=output, stdout=output or io.StringIO())
    cfg.set_main_option("script_location", str(script_location()))
    cfg.attributes["schema"] = schema
    return cfg


def _run_online(dsn: str, schema: str, action: str, target: str) -> None:
    # NullPool + creator: any libpq DSN or URL works, through psycopg 3 only. Nothing is
    # prepared, so a transaction-mode pooler works too: the whole upgrade is one
    # transaction, and its advisory lock is transaction-scoped.
    engine = create_engine(
        "postgresql+psycopg://", creator=lambda: psycopg.connect(dsn, prepare_threshold=None),
        poolclass=NullPool,
    )
    try:
        with _ALEMBIC, engine.begin() as connection:
            cfg = _config(schema)
            cfg.attributes["connection"] = connection
            getattr(command, action)(cfg, target)
    except DBAPIError as exc:
        # SQLAlchemy is only alembic's transport here: surface psycopg's own error (for
        # example OperationalError when the server cannot be reached), not its wrapper.
        if isinstance(exc.orig, psycopg.Error):
            raise exc.orig from None
        raise
    finally:
        engine.dispose()


def upgrade(dsn: str, schema: str = "pgjobs", target: str = "head") -> None:
    """Upgrade the schema to ``target`` (idempotent; concurrent runs are serialised)."""
    _run_online(dsn, schema, "upgrade", target)


def downgrade(dsn: str, schema: str, target: str) -> None:
    """Revert to revision ``target`` (``base`` removes every pgjobs table)."""
    _run_online(dsn, schema, "downgrade", target)


def upgrade_sql(schema: str = "pgjobs", target: str = "head", start: str | None = None) -> str:
    """The SQL that upgrades an empty schema (or ``start``) to ``target``, for a DBA."""
    out = io.StringIO()
    span = f"{start}:{target}" if start else target
    with _ALEMBIC:
        command.upgrade(_config(schema, out), span, sql=True)
    return out.getvalue()


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config("pgjobs")).get_current_head()
    assert head is not None
    return head


def current_revision(conn: psycopg.Connection[Any], schema: str) -> str | None:
    """The revision applied to ``schema`` (None when pgjobs was never migrated there)."""
    return schema_revision.revision(conn, Queries(schema))
