"""Prometheus metrics of a worker process (the ``pgjobs[prometheus]`` extra).

    pgjobs worker --app shop.tasks:app --metrics-port 9500

or from Python, before the worker starts: ``record(app)`` and ``serve(9500)``. The series
are this process's own (docs/observability.md explains each one); with ``--processes N``
each child writes them to a shared directory (prometheus_client's multiprocess mode) and
the supervisor serves the sum of all of them on one port.

Everything is fed by the app's extension points: the outcome and ``reclaimed`` events
(``App.on``) and a :class:`pgjobs.Probe` for claims, lease renewals and slots.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections import Counter as CounterOf
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import multiprocess as _multiprocess
from prometheus_client.exposition import start_http_server

from ..core.errors import ConfigurationError
from ..core.hooks import JobEvent, Probe
from ..worker.host import Host

OUTCOMES = ("succeeded", "retried", "died", "cancelled", "snoozed", "released", "lease_lost")
"""The events counted in ``pgjobs_jobs_finished_total``, as its ``outcome`` label."""

JOB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
               120.0, 300.0, 600.0, 1800.0, 3600.0)
"""Handler run times, from a no-op job to an hour."""
CLAIM_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Claim round trips: about a millisecond on a quiet local server, more under load."""

FLUSH_EVERY = 0.5
"""Seconds between two applications of what the worker reported (see WorkerMetrics)."""

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
"""Where prometheus_client's multiprocess mode keeps each process's values (read by
prometheus_client when it is imported: set it before the process starts)."""


class WorkerMetrics(Probe):
    """The per-process series, registered in ``registry``, fed by ``app``'s hooks."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.finished = Counter(
            "pgjobs_jobs_finished", "Attempts that ended, by task, queue and outcome.",
            ("task", "queue", "outcome"), registry=registry)
        self.duration = Histogram(
            "pgjobs_job_duration_seconds", "Seconds each attempt's handler ran, by task.",
            ("task",), buckets=JOB_BUCKETS, registry=registry)
        self.claim = Histogram(
            "pgjobs_claim_duration_seconds", "Seconds each claim statement took, round trip.",
            buckets=CLAIM_BUCKETS, registry=registry)
        self.reclaimed = Counter(
            "pgjobs_jobs_reclaimed", "Jobs this process's maintenance took back from lost "
            "workers, by queue and the state they went to (available, or dead once their "
            "recovery budget was spent).", ("queue", "state"), registry=registry)
        self.renewals = Counter(
            "pgjobs_lease_renewals_failed", "Leases a heartbeat did not renew: the "
            "heartbeat failed, or found the lease lost.", registry=registry)
        # livesum: with --processes, the sum over the processes alive now.
        self.running = Gauge("pgjobs_jobs_running", "Handlers running now.",
                             registry=registry, multiprocess_mode="livesum")
        self.free = Gauge("pgjobs_free_slots", "Slots free for another job now "
                          "(--concurrency minus the handlers running).",
                          registry=registry, multiprocess_mode="livesum")
        # Label lookups cost more than the increments: one child per label set, kept.
        self._finished: dict[tuple[str, str, str], Any] = {}
        self._durations: dict[str, Any] = {}
        # Per job, the worker's event loop only appends to a deque (thread-safe, a tenth
        # of a microsecond); a thread applies what piled up every FLUSH_EVERY seconds,
        # off the loop that runs the jobs (a counter update and a histogram observation
        # cost microseconds each, and would otherwise delay every job's successor).
        self._done: deque[tuple[str, str, str, float | None]] = deque()
        self._claims: deque[float] = deque()
        self._occupancy = (0, 0)
        # Slot gauges: read at scrape time in one process; copied at each flush in
        # multiprocess mode, whose scrape cannot call back into the worker.
        self._shared = bool(os.environ.get(MULTIPROCESS_DIR))
        if not self._shared:
            self.running.set_function(lambda: self._occupancy[0])
            self.free.set_function(lambda: self._occupancy[1])

    def attach(self, app: Host) -> WorkerMetrics:
        """Listen to ``app``'s events and measure its workers (before they start)."""
        app.hooks.add_listener(OUTCOMES, self.job_finished)
        app.hooks.add_listener(("reclaimed",), self.job_reclaimed)
        app.hooks.probes.append(self)
        threading.Thread(target=self._flushing, name="pgjobs-metrics", daemon=True).start()
        atexit.register(self.flush)  # what the last interval collected
        return self

    def _flushing(self) -> None:
        while True:
            time.sleep(FLUSH_EVERY)
            self.flush()

    def flush(self) -> None:
        """Apply what the worker reported since the last flush."""
        counts: CounterOf[tuple[str, str, str]] = CounterOf()
        done, claims = self._done, self._claims
        while done:
            task, queue, kind, duration = done.popleft()
            counts[(task, queue, kind)] += 1
            if duration is not None:
                histogram = self._durations.get(task)
                if histogram is None:
                    histogram = self._durations[task] = self.duration.labels(task)
                histogram.observe(duration)
        for key, n in counts.items():
            counter = self._finished.get(key)
            if counter is None:
                counter = self._finished[key] = self.finished.labels(*key)
            counter.inc(n)
        while claims:
            self.claim.observe(claims.popleft())
        if self._shared:
            running, free = self._occupancy
            self.running.set(running)
            self.free.set(free)

    def job_finished(self, event: JobEvent) -> None:
        self._done.append((event.task, event.queue, event.kind, event.duration))

    def job_reclaimed(self, event: JobEvent) -> None:
        self.reclaimed.labels(event.queue, event.state or "").inc()

    # -- Probe -------------------------------------------------------------------------

    def claimed(self, jobs: int, seconds: float) -> None:
        self._claims.append(seconds)

    def renewals_failed(self, leases: int) -> None:
        self.renewals.inc(leases)

    def occupancy(self, running: int, free: int) -> None:
        self._occupancy = (running, free)


def record(app: Host, registry: CollectorRegistry = REGISTRY) -> WorkerMetrics:
    """Record ``app``'s worker metrics in ``registry`` (prometheus_client's default)."""
    return WorkerMetrics(registry).attach(app)


def serve(port: int, host: str = "0.0.0.0", registry: CollectorRegistry | None = None
          ) -> Callable[[], None]:
    """Serve ``/metrics`` on ``host:port`` from a daemon thread; returns its ``stop``.
    Without ``registry``: the default one, or every process's values when this process
    runs in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set)."""
    if registry is None:
        folder = os.environ.get(MULTIPROCESS_DIR)
        registry = multiprocess_registry(folder) if folder else REGISTRY
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigurationError(f"cannot serve metrics on {host}:{port} ({exc}); choose "
                                 "another --metrics-port") from exc

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return stop


def multiprocess_registry(folder: str | Path) -> CollectorRegistry:
    """A registry that reads the values every process wrote in ``folder``."""
    registry = CollectorRegistry()
    _multiprocess.MultiProcessCollector(registry, path=str(folder))  # type: ignore[no-untyped-call]
    return registry


def clear(folder: str | Path) -> None:
    """Remove the values of earlier runs: a new supervisor starts from zero, and files of
    processes long gone would otherwise be summed in forever."""
    for stale in Path(folder).glob("*.db"):
        stale.unlink(missing_ok=True)


def process_gone(pid: int, folder: str | Path) -> None:
    """A process exited: drop its live gauges (running jobs, free slots). Its counters and
    histograms stay, so the fleet's totals never go down."""
    _multiprocess.mark_process_dead(pid, str(folder))  # type: ignore[no-untyped-call]
