"""Expire: available jobs past their ``expires_at`` end ``expired``. The claim already
skips them; this makes the outcome visible, and releases their unique holds and counts
them into their batch (through the triggers)."""

from __future__ import annotations

from ...db import leases
from ...db.queries import Queries
from .base import QueryStep


class Expirer(QueryStep):
    name = "expire"

    def __init__(self, queries: Queries, interval: float = 1.0, limit: int = 1000) -> None:
        super().__init__(leases.expire(queries, limit), interval)
