"""Unique holds whose time ran out (``unique_for`` elapsed) are deleted, so the key can be
taken again without an enqueue having to take over the stale hold."""

from __future__ import annotations

from ...db import retention
from ...db.queries import Queries
from .base import QueryStep


class UniqueKeyPruner(QueryStep):
    name = "prune unique keys"

    def __init__(self, queries: Queries, interval: float = 30.0, limit: int = 1000) -> None:
        super().__init__(retention.unique_keys(queries, limit), interval)
