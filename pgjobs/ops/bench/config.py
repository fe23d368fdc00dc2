"""What one ``pgjobs bench`` run measures, and how much."""

from __future__ import annotations

from dataclasses import dataclass

SCENARIOS = ("enqueue_single", "enqueue_bulk", "drain", "latency", "batch")
DRAIN_KINDS = ("sync", "async", "sync_tx", "async_tx")


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of one ``pgjobs bench`` run (``--flag`` / ``PGJOBS_BENCH_*``)."""

    rounds: int = 3
    scenarios: tuple[str, ...] = SCENARIOS
    single: int = 2_000
    """Jobs per enqueue_single measurement (split among the enqueuers)."""
    enqueuers: int = 1
    """Concurrent single-job enqueuers (threads, one connection each)."""
    bulk: int = 50_000
    """Jobs per enqueue_bulk measurement."""
    bulk_batch: int = 10_000
    """Rows per enqueue_many call (and per COPY) in enqueue_bulk."""
    drain: int = 20_000
    """Pre-filled jobs per drain measurement."""
    processes: int = 2
    """Worker processes of the multi-process drain (the single-process one always runs)."""
    concurrency: int = 10
    """Worker concurrency in drain and latency."""
    drain_kinds: tuple[str, ...] = DRAIN_KINDS
    latency_rate: float = 50.0
    """Jobs per second in the latency scenario."""
    latency_seconds: float = 5.0
    batch_jobs: int = 4_000
    """Jobs per batch-scenario measurement (each in one batch, or in none)."""
    batch_concurrency: int = 16
    """Worker concurrency (and raw-SQL threads per process) in the batch scenario; it runs
    ``processes`` worker processes."""
