"""What ``pgjobs exporter`` reads: the queue-wide gauges, in one statement."""

from __future__ import annotations

from dataclasses import dataclass

from .queries import Queries
from .statement import Query, every, named


@dataclass(frozen=True, slots=True)
class GaugeRow:
    """One value of one gauge (``db.sql.metrics.metrics_gauges`` says which)."""

    metric: str
    queue: str | None
    state: str | None
    value: float


def gauges(q: Queries) -> Query[list[GaugeRow]]:
    return Query(q.metrics_gauges, None, every, named(GaugeRow), schema=q.schema)
