"""Batches: create one, register a callback, read its counters, fold its deltas."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..core.types import BatchStatus
from .queries import Queries
from .statement import Query, Rows, column, first, named, scalar


def insert(q: Queries, parent_id: int | None, description: str | None) -> Query[int | None]:
    """A new batch (a child counts itself into its parent); None when the parent does not
    exist or has already succeeded."""
    params = {"parent_id": parent_id, "description": description, "meta": "{}"}
    return Query(q.batch_insert, params, scalar, schema=q.schema)


def add_callback(q: Queries, batch_id: int, event: str,
                 callback: dict[str, Any]) -> Query[int | None]:
    """Append ``callback`` (the full job row ``batch_fire`` inserts) to the batch; None
    when the batch is missing or ``event`` has already fired."""
    params = {"id": batch_id, "event": event,
              "callback": json.dumps(callback, ensure_ascii=False)}
    return Query(q.batch_add_callback, params, scalar, schema=q.schema)


def get(q: Queries, batch_id: int) -> Query[BatchStatus | None]:
    return Query(q.batch_get, {"id": batch_id}, first, named(BatchStatus), schema=q.schema)


def fold(q: Queries, ids: Sequence[int]) -> Query[list[int]]:
    """Fold the deltas of batches ``ids`` into their counters and fire the events due;
    returns the ids skipped because another transaction held their row (fold them
    again later)."""
    return Query(q.batch_fold, {"ids": list(ids)}, _skipped, schema=q.schema)


def unfolded(q: Queries, limit: int = 100) -> Query[list[int]]:
    """Batches with deltas not yet folded, lowest id first."""
    return Query(q.batch_unfolded, {"limit": limit}, column, schema=q.schema)


def _skipped(rows: Rows, count: int) -> list[int]:
    return list(rows[0][0] or []) if rows else []
