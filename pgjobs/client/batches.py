"""Batches: a group of jobs with callbacks, built in the caller's transaction.

The counters and callbacks are kept by triggers on ``jobs`` (revisions 0002 and 0005), so
every state change, by a worker or by hand, is counted in its own transaction, and a
callback is enqueued exactly once, in the transaction whose change made it due. A
callback is stored as the full job row the Python row builder would write (queue,
priority, attempts, times, per-key limits, the notification channel or none), and
``batch_fire`` inserts exactly that.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import pq

from ..core.errors import BatchFinished, ConfigurationError
from ..core.types import BatchStatus, Enqueued
from ..db import batches
from .task import Host, Task

AnyConnection = psycopg.Connection[Any]


class Batch:
    """A batch being built on ``conn``: add jobs and register callbacks, then commit.

    Everything happens in the caller's transaction, so the batch, its jobs and its
    callbacks commit or vanish together. Register callbacks before the transaction
    commits: once a batch has succeeded it takes no more jobs or callbacks.
    """

    def __init__(self, app: Host, conn: AnyConnection, batch_id: int) -> None:
        self.app = app
        self.conn = conn
        self.id = batch_id

    def __repr__(self) -> str:
        return f"<pgjobs.Batch {self.id}>"

    def enqueue(self, task: Task[..., Any], /, **kwargs: Any) -> Enqueued:
        """Enqueue one job of ``task`` into this batch."""
        return task.options(batch=self.id).enqueue(self.conn, **kwargs)

    def enqueue_many(
        self, task: Task[..., Any], rows: Iterable[Mapping[str, Any]]
    ) -> list[Enqueued]:
        """Enqueue one job per mapping in ``rows`` into this batch, in one statement."""
        return task.options(batch=self.id).enqueue_many(self.conn, rows)

    def on_complete(self, task: Task[..., Any], /, **kwargs: Any) -> None:
        """Run ``task(**kwargs)`` once every job has run at least once."""
        self._callback("complete", task, kwargs)

    def on_success(self, task: Task[..., Any], /, **kwargs: Any) -> None:
        """Run ``task(**kwargs)`` once every job has succeeded (and every child batch)."""
        self._callback("success", task, kwargs)

    def on_death(self, task: Task[..., Any], /, **kwargs: Any) -> None:
        """Run ``task(**kwargs)`` once, when the first job of the batch dies."""
        self._callback("death", task, kwargs)

    def _callback(self, event: str, task: Task[..., Any], kwargs: Mapping[str, Any]) -> None:
        row = batches.add_callback(self.app.queries, self.id, event,
                                   callback_row(event, task, kwargs)).run(self.conn)
        if row is None:
            raise BatchFinished(
                f"batch {self.id} does not exist or its {event} event has already fired; "
                "register callbacks in the transaction that creates the batch"
            )

    def child(self, description: str | None = None) -> Batch:
        """A child batch: this batch's callbacks wait until the child completes/succeeds."""
        return create_batch(self.app, self.conn, description, parent=self.id)

    def status(self) -> BatchStatus:
        """The counters as ``conn`` sees them now."""
        return get_status(self.app, self.conn, self.id)


def callback_row(event: str, task: Task[..., Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The job ``batch_fire`` inserts when ``event`` fires: what ``task.enqueue(**kwargs)``
    would write, with times relative to the moment it fires. (Unique options do not
    apply to callbacks, which fire exactly once anyway.)"""
    opts, config = task.opts, task.app.config
    args = task.encoder.encode(kwargs)
    return {
        "event": event, "task": task.name, "queue": opts.queue,
        "args": json.loads(args), "priority": opts.priority,
        "max_attempts": opts.max_attempts,
        "run_at": _when(opts.run_at), "run_in": _seconds(opts.run_in),
        "expires_at": _when(opts.expires_at), "expires_in": _seconds(opts.expires_in),
        **{name: _seconds(value) if isinstance(value, timedelta) else value
           for name, value in task.limit_columns(kwargs).items()},
        "channel": config.channel if config.notify else None,
    }


def _when(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _seconds(value: timedelta | None) -> float | None:
    return None if value is None else value.total_seconds()


def create_batch(
    app: Host, conn: AnyConnection, description: str | None, parent: int | None = None
) -> Batch:
    if conn.autocommit and conn.info.transaction_status == pq.TransactionStatus.IDLE:
        # Each statement would commit on its own: the still-empty batch would succeed at
        # once and refuse the jobs that follow. (Inside `conn.transaction()` an autocommit
        # connection is in a transaction, and that is fine.)
        raise ConfigurationError(
            "build a batch inside a transaction: use a connection with autocommit off "
            "(or `with conn.transaction():`)"
        )
    batch_id = batches.insert(app.queries, parent, description).run(conn)
    if batch_id is None:
        raise BatchFinished(f"parent batch {parent} does not exist or has already succeeded")
    return Batch(app, conn, int(batch_id))


def get_status(app: Host, conn: AnyConnection, batch_id: int) -> BatchStatus:
    status = batches.get(app.queries, batch_id).run(conn)
    if status is None:
        raise BatchFinished(f"batch {batch_id} does not exist")
    return status
