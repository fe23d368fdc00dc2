"""Queue-wide gauges for Prometheus, computed in SQL once per scrape (``pgjobs exporter``).

Workers report what they do (``prometheus``); the state of the queue (backlog by state,
how long the oldest due job has waited, dead jobs, live workers, pending batches) is one
statement against the database, run by a single exporter for the whole fleet, so that N
workers do not each run it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..core.errors import PgJobsError
from ..db import status
from ..db.queries import Queries

log = logging.getLogger("pgjobs.exporter")

FAMILIES = {
    "jobs": ("pgjobs_queue_jobs", "Jobs by queue and state.", ("queue", "state")),
    "oldest_available_seconds": (
        "pgjobs_queue_oldest_available_age_seconds",
        "Seconds the oldest due job of each queue has waited (0: none due).", ("queue",)),
    "dead": ("pgjobs_queue_dead_jobs", "Dead jobs by queue (kept until retention).",
             ("queue",)),
    "workers": ("pgjobs_workers_alive",
                "Worker processes whose heartbeat is within their lease, by state.",
                ("state",)),
    "batches_pending": ("pgjobs_batches_pending", "Batches whose jobs have not all run.", ()),
}


class QueueCollector(Collector):
    """Reads the gauges on a connection of its own at each scrape. A database that
    cannot be read is reported as ``pgjobs_exporter_up 0``, never as a failed scrape."""

    def __init__(self, dsn: str, schema: str = "pgjobs", timeout: float = 10.0) -> None:
        self.dsn = dsn
        self.queries = Queries(schema)
        self.timeout = timeout

    def read(self) -> list[status.GaugeRow]:
        # A connection per scrape: nothing to keep alive between scrapes seconds apart,
        # and nothing to recover after a restart of the server. Never prepared, so a
        # transaction-mode pooler is fine.
        with psycopg.connect(self.dsn, autocommit=True, prepare_threshold=None,
                             connect_timeout=max(1, int(self.timeout)),
                             application_name="pgjobs-exporter") as conn:
            return status.gauges(self.queries).run(conn)

    def collect(self) -> Iterable[Any]:
        started = time.perf_counter()
        try:
            rows = self.read()
            up = 1.0
        except (psycopg.Error, PgJobsError) as exc:
            log.warning("cannot read the queue gauges: %s", exc)
            rows, up = [], 0.0
        families = {name: GaugeMetricFamily(metric, text, labels=labels)
                    for name, (metric, text, labels) in FAMILIES.items()}
        for row in rows:
            family = families[row.metric]
            labels = {"queue": row.queue or "", "state": row.state or ""}
            family.add_metric([labels[name] for name in FAMILIES[row.metric][2]], row.value)
        yield from families.values()
        yield GaugeMetricFamily("pgjobs_exporter_up",
                                "1 when the last scrape read the database, else 0.", up)
        yield GaugeMetricFamily("pgjobs_exporter_scrape_duration_seconds",
                                "Seconds the last scrape's statement took.",
                                time.perf_counter() - started)


def registry(dsn: str, schema: str = "pgjobs") -> CollectorRegistry:
    """A registry with only the queue gauges (no process metrics of the exporter)."""
    found = CollectorRegistry()
    found.register(QueueCollector(dsn, schema))
    return found
