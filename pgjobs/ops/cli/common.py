"""What every ``pgjobs`` subcommand shares: the database target the group passes down,
a one-off connection, and plain-text tables."""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import ModuleType
from typing import Any, Literal

import click
import psycopg

from ...core.errors import ConfigurationError, MissingDatabaseURL, PgJobsError
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


@dataclass(frozen=True)
class Logs:
    """How a long-running command (worker, exporter) prints its log lines."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """The lowest level of log lines printed."""
    log_format: Literal["text", "json"] = "text"
    """How log lines are printed: text, or json (one object per line, with job id, task,
    queue, attempt, outcome, duration and worker id on each job's line)."""

    def configure(self) -> None:
        from ...observability import logs

        logs.configure(self.log_level, self.log_format)


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


EXTRAS = {"prometheus": "prometheus", "exporter": "prometheus", "tracing": "otel"}
"""The extra each optional module of ``pgjobs.observability`` needs."""


def optional(module: str, needed_by: str) -> ModuleType:
    """``pgjobs.observability.<module>``, or an error naming the extra to install."""
    try:
        return importlib.import_module(f"pgjobs.observability.{module}")
    except ImportError as exc:
        extra = EXTRAS[module]
        raise ConfigurationError(f"{needed_by} needs the {extra} extra ({exc}); install it: "
                                 f"pip install 'pgjobs[{extra}]'") from exc
