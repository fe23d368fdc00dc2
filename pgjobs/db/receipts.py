"""Reliable push's receipts: written with the jobs of an enqueue made without a
connection, read by a retry whose first try's commit outcome is unknown."""

from __future__ import annotations

import json
import uuid
from typing import Any

from ..core.types import Enqueued
from .queries import Queries
from .statement import Query, Rows


def put(q: Queries, key: uuid.UUID, results: list[Enqueued]) -> Query[None]:
    encoded = json.dumps([[r.id, r.duplicate] for r in results])
    return Query(q.enqueue_receipt_put, {"key": key, "results": encoded}, _nothing,
                 schema=q.schema)


def get(q: Queries, key: uuid.UUID) -> Query[list[Enqueued] | None]:
    """The results the receipt recorded (None: no receipt, the first try did not commit)."""
    return Query(q.enqueue_receipt_get, {"key": key}, _results, schema=q.schema)


def _nothing(rows: Rows, count: int) -> None:
    return None


def _results(rows: Rows, count: int) -> list[Enqueued] | None:
    if not rows:
        return None
    recorded: list[Any] = rows[0][0]
    return [Enqueued(int(job_id), bool(dup)) for job_id, dup in recorded]
