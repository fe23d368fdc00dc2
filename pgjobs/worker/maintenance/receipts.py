"""Reliable-push receipts older than a day are deleted: no retry looks for them then."""

from __future__ import annotations

from ...db import retention
from ...db.queries import Queries
from .base import QueryStep


class ReceiptPruner(QueryStep):
    name = "prune receipts"

    def __init__(self, queries: Queries, interval: float = 60.0, limit: int = 10_000) -> None:
        super().__init__(retention.receipts(queries, limit), interval)
