"""Run-time queue settings (``queues``): pause, resume, limits, and the list."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from .queries import Queries
from .statement import Query, every, first, records, rowcount


def set_paused(q: Queries, name: str, paused: bool, channel: str) -> Query[int]:
    """Pause or resume ``name``; idle workers are notified when it commits."""
    params = {"name": name, "paused": paused, "channel": channel}
    return Query(q.queue_set_paused, params, rowcount, schema=q.schema)


def set_limits(q: Queries, name: str, channel: str, *,
               concurrency_limit: int | None = None, set_concurrency: bool = False,
               rate_limit: int | None = None, rate_period: timedelta | None = None,
               set_rate: bool = False) -> Query[dict[str, Any]]:
    """Set (or clear, with None) the limits flagged by ``set_*``; the queue's limits now."""
    params = {"name": name, "channel": channel, "concurrency_limit": concurrency_limit,
              "set_concurrency": set_concurrency, "rate_limit": rate_limit,
              "rate_period": rate_period, "set_rate": set_rate}
    return Query(q.queue_set_limits, params, first, records, schema=q.schema)


def list_all(q: Queries) -> Query[list[dict[str, Any]]]:
    """Every queue with settings or live jobs: name, paused, concurrency_limit,
    rate_limit, rate_period, available, running."""
    return Query(q.queue_list, None, every, records, schema=q.schema)
