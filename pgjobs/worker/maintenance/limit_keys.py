"""``limit_keys`` rows of concurrency keys nobody used for an hour (or for their rate
period, if longer) are deleted; a key that comes back starts a new row."""

from __future__ import annotations

from ...db import retention
from ...db.queries import Queries
from .base import QueryStep


class LimitKeyPruner(QueryStep):
    name = "prune limit keys"

    def __init__(self, queries: Queries, interval: float = 300.0, limit: int = 1000) -> None:
        super().__init__(retention.limit_keys(queries, limit), interval, first_delay=interval,
                         report=False)
