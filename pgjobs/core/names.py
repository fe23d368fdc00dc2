"""Names that reach SQL or the NOTIFY channel: queues, tasks, schemas, and the channel.

Each is checked against a strict pattern before any SQL is sent (``InvalidName``), so a
hostile name never reaches the database; names are passed as parameters or composed with
``psycopg.sql.Identifier`` anyway.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

from .errors import InvalidName

QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,62}")
TASK_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:<>\-]{0,254}")
SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,49}")


def check_name(kind: str, value: object, pattern: re.Pattern[str], hint: str) -> str:
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise InvalidName(f"invalid {kind} name {value!r}: {hint}")
    return value


def check_queue(value: object) -> str:
    return check_name(
        "queue", value, QUEUE_NAME,
        "use 1-63 characters from letters, digits, '_', '.', ':' and '-', "
        "starting with a letter or digit",
    )


def check_task_name(value: object) -> str:
    return check_name(
        "task", value, TASK_NAME,
        "use 1-255 characters from letters, digits, '_', '.', ':', '<', '>' and '-', "
        "starting with a letter or '_' (pass @app.job(name=...) to choose one)",
    )


def close_task_names(name: str, known: Iterable[str], limit: int = 3) -> list[str]:
    """Registered names ``name`` was probably meant to be: those that end in ``.name``
    (``send_mail`` for ``shop.send_mail``), then difflib's close matches."""
    names = sorted(known)
    suffix = [k for k in names if k.endswith("." + name) or k.endswith(":" + name)]
    similar = difflib.get_close_matches(name, names, n=limit, cutoff=0.6)
    return list(dict.fromkeys([*suffix, *similar]))[:limit]


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``"; did you mean 'shop.send_mail'?"``, or ``""`` when nothing is close."""
    close = close_task_names(name, known)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def check_schema(value: object) -> str:
    hint = "use 1-50 characters from letters, digits and '_', starting with a letter or '_'"
    if isinstance(value, str) and value.lower() == "public":
        # pgjobs keeps its own alembic_version table in its schema; in public it would be
        # the application's own and break its migrations.
        raise InvalidName(f"invalid schema name {value!r}: pgjobs needs a schema of its own")
    if isinstance(value, str) and value.startswith("pg_"):
        # PostgreSQL refuses to create schemas with this prefix (reserved for its own).
        raise InvalidName(f"invalid schema name {value!r}: the prefix 'pg_' is reserved; {hint}")
    return check_name("schema", value, SCHEMA_NAME, hint)


def channel_for(schema: str) -> str:
    """The LISTEN/NOTIFY channel that wakes the workers of ``schema``: the one place this
    name is built. The payload of each notification is a queue name (at most 63 bytes)."""
    return f"pgjobs_{schema}"


def done_channel_for(schema: str) -> str:
    """The channel on which a job's end (a terminal state) is announced, with its id as
    payload (the ``jobs_done_notify`` trigger of revision 0009 builds the same name)."""
    return f"pgjobs_{schema}_done"
