"""Batches: a group of jobs with callbacks, built in the caller's transaction.

The counters and callbacks are kept by triggers on ``jobs`` (revision 0002), so every
state change, by a worker or by hand, is counted in its own transaction, and a callback is
enqueued exactly once, in the transaction whose change made it due.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from psycopg import pq

from ._db import tuples
from ._errors import BatchFinished, ConfigurationError
from ._job import row_dict

if TYPE_CHECKING:
    import psycopg

    from ._app import App, Task
    from ._enqueue import Enqueued

EVENTS = ("complete", "success", "death")


@dataclass(frozen=True, slots=True)
class BatchStatus:
    """A batch's counters at one moment (``batch_progress`` in SQL)."""

    id: int
    parent_id: int | None
    description: str | None
    state: str
    """pending, complete (every job ran at least once) or succeeded."""
    total: int
    pending: int
    """Jobs not yet succeeded (cancelled counts as succeeded)."""
    succeeded: int
    failed: int
    """Pending jobs that have failed at least once (dead ones included)."""
    dead: int
    """Jobs that are dead or expired."""
    children_pending: int
    children_incomplete: int
    created_at: datetime
    completed_at: datetime | None
    succeeded_at: datetime | None
    died_at: datetime | None

    @property
    def complete(self) -> bool:
        return self.completed_at is not None

    @property
    def succeeded_all(self) -> bool:
        return self.succeeded_at is not None


class Batch:
    """A batch being built on ``conn``: add jobs and register callbacks, then commit.

    Everything happens in the caller's transaction, so the batch, its jobs and its
    callbacks commit or vanish together. Register callbacks before the transaction
    commits: once a batch has succeeded it takes no more jobs or callbacks.
    """

    def __init__(self, app: App, conn: psycopg.Connection[Any], batch_id: int) -> None:
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
        opts = task.opts
        callback = {
            "event": event, "task": task.name, "queue": opts.queue,
            "args": json.loads(task.encoder.encode(kwargs)),
            "priority": opts.priority, "max_attempts": opts.max_attempts,
        }
        row = tuples(self.conn).execute(
            self.app.queries.batch_add_callback,
            {"id": self.id, "event": event,
             "callback": json.dumps(callback, ensure_ascii=False)},
        ).fetchone()
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


def create_batch(
    app: App, conn: psycopg.Connection[Any], description: str | None, parent: int | None = None
) -> Batch:
    if conn.autocommit and conn.info.transaction_status == pq.TransactionStatus.IDLE:
        # Each statement would commit on its own: the still-empty batch would succeed at
        # once and refuse the jobs that follow. (Inside `conn.transaction()` an autocommit
        # connection is in a transaction, and that is fine.)
        raise ConfigurationError(
            "build a batch inside a transaction: use a connection with autocommit off "
            "(or `with conn.transaction():`)"
        )
    row = tuples(conn).execute(
        app.queries.batch_insert,
        {"parent_id": parent, "description": description, "meta": "{}"},
    ).fetchone()
    if row is None:
        raise BatchFinished(f"parent batch {parent} does not exist or has already succeeded")
    return Batch(app, conn, int(row[0]))


def get_status(app: App, conn: psycopg.Connection[Any], batch_id: int) -> BatchStatus:
    cursor = tuples(conn).execute(app.queries.batch_get, {"id": batch_id})
    row = cursor.fetchone()
    if row is None:
        raise BatchFinished(f"batch {batch_id} does not exist")
    return BatchStatus(**row_dict(cursor, row))
