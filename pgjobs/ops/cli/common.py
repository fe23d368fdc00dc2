"""What every ``pgjobs`` subcommand shares: the database target the group passes down,
a one-off connection, and plain-text tables."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import click
import psycopg

from ...core.errors import MissingDatabaseURL, PgJobsError
from ...core.names import check_queue


@dataclass
class Target:
    """The database and schema the ``pgjobs`` group was given (``--dsn``, ``--schema``)."""

    dsn_option: str | None
    schema: str

    @property
    def dsn(self) -> str:
        if not self.dsn_option:
            raise MissingDatabaseURL()
        return self.dsn_option


def connect(obj: Target) -> psycopg.Connection[Any]:
    # One-off statements: never prepared, so a transaction-mode pooler is fine.
    return psycopg.connect(obj.dsn, autocommit=True, prepare_threshold=None)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    for line in (headers, *rows):
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


def seconds(value: timedelta | None) -> str:
    if value is None:
        return "-"
    return f"{value.total_seconds():g}s"


def when(value: datetime | None) -> str:
    return "-" if value is None else value.isoformat(sep=" ", timespec="seconds")


def queue_name(name: str) -> str:
    try:
        return check_queue(name)
    except PgJobsError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str, ensure_ascii=False))
