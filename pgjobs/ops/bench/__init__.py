"""``pgjobs bench``: pgjobs' throughput and latency on your server, next to minimal SQL.

Every pgjobs figure is measured beside a hand-written minimal-SQL baseline doing the same
work on the same tables, in the same run, alternating which goes first each round, so the
ratio is meaningful even on a busy machine. Scenarios:

    enqueue_single  one job per transaction (task.enqueue(conn); commit), K enqueuers
    enqueue_bulk    task.enqueue_many(conn, rows) vs COPY
    drain           pre-filled no-op jobs run by 1 and N worker processes, sync and async
                    handlers, with and without current_job().complete(conn)
    latency         enqueue-commit -> handler-start at a fixed rate, idle worker

It creates its own schema (``pgjobs_bench_<random>``, its own NOTIFY channel), so real
queues and workers never see its jobs, and drops it at the end.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from . import batches
from .app import _POOLS, _open_pools, _task_name, bench_app, serve_until_stopped
from .config import DRAIN_KINDS, SCENARIOS, BenchConfig
from .report import dumps, format_table, percentile
from .runner import Bench

__all__ = [
    "DRAIN_KINDS",
    "SCENARIOS",
    "_POOLS",
    "Bench",
    "BenchConfig",
    "_open_pools",
    "_task_name",
    "batches",
    "bench_app",
    "dumps",
    "format_table",
    "percentile",
    "run_bench",
    "serve_until_stopped",
]


def run_bench(dsn: str, config: BenchConfig, progress: TextIO | None = sys.stderr
              ) -> dict[str, Any]:
    return Bench(dsn, config, progress).run()
