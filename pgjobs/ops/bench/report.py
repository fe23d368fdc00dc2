"""The bench's report: medians and ratios (of the medians, and paired per round), and
the table ``pgjobs bench`` prints."""

from __future__ import annotations

import json
import os
import platform
import statistics
from dataclasses import asdict
from typing import Any

from ...core.version import __version__
from .config import BenchConfig


def report(runs: dict[str, list[float]], config: BenchConfig, server: dict[str, str],
           seconds: float) -> dict[str, Any]:
    """The medians, ratios and raw runs of a bench, as JSON-ready values."""
    med = {name: statistics.median(values) for name, values in runs.items()}
    rows: list[dict[str, Any]] = []

    def row(name: str, label: str, pgjobs: str, baseline: str, unit: str,
            higher_is_better: bool = True) -> None:
        if pgjobs not in med or baseline not in med:
            return
        pairs = [a / b for a, b in zip(runs[pgjobs], runs[baseline], strict=False)
                 if b]
        rows.append({
            "name": name, "label": label, "unit": unit, "higher_is_better": higher_is_better,
            "pgjobs": med[pgjobs], "baseline": med[baseline], "baseline_name": baseline,
            "ratio": med[pgjobs] / med[baseline] if med[baseline] else None,
            # the median of each round's own ratio: steadier when the machine's load
            # drifts between rounds (both sides of a round share its conditions)
            "ratio_paired": statistics.median(pairs) if pairs else None,
            "pgjobs_runs": runs[pgjobs], "baseline_runs": runs[baseline],
        })

    k = config.enqueuers
    row("enqueue_single", f"enqueue, one job per transaction ({k} enqueuer(s))",
        "enqueue_single/pgjobs", "enqueue_single/minimal_sql", "jobs/s")
    row("enqueue_single_notify_cost", "  minimal SQL with NOTIFY vs without",
        "enqueue_single/minimal_sql_notify", "enqueue_single/minimal_sql", "jobs/s")
    row("enqueue_bulk", f"enqueue_many ({config.bulk_batch:,}/call) vs COPY",
        "enqueue_bulk/pgjobs", "enqueue_bulk/minimal_sql", "jobs/s")
    row("drain_minimal_claims_of_10", "  minimal SQL drain, claims of 10 vs of 100",
        "drain/minimal_sql_claims_of_10", "drain/minimal_sql_claims_of_100", "jobs/s")
    for procs in sorted({1, config.processes}):
        for kind in config.drain_kinds:
            row(f"drain_{kind}_p{procs}",
                f"drain, {kind} handlers, {procs} process(es) vs claims of 100",
                f"drain/pgjobs_{kind}_p{procs}", "drain/minimal_sql_claims_of_100",
                "jobs/s")
    for shape in ("noop", "transactional", "transactional_own"):
        row(f"batch_{shape}", f"batch: {shape} jobs in one batch vs without",
            f"batch/{shape}_batch", f"batch/{shape}_plain", "jobs/s")
    for shape in ("transactional", "transactional_own"):
        row(f"batch_{shape}_vs_raw", f"batch: {shape} jobs without a batch vs raw SQL",
            f"batch/{shape}_plain", "batch/transactional_raw_sql", "jobs/s")
    for p in ("p50", "p90", "p99"):
        row(f"latency_{p}", f"enqueue-commit -> handler start, {p}",
            f"latency_{p}/pgjobs", f"latency_{p}/minimal_sql", "ms", higher_is_better=False)
    return {
        "pgjobs_version": __version__,
        "server": server,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "config": asdict(config),
        "seconds": round(seconds, 1),
        "results": rows,
        "runs": runs,
    }


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def format_table(report: dict[str, Any]) -> str:
    s = report["server"]
    lines = [
        f"PostgreSQL {s['server_version']}: synchronous_commit={s['synchronous_commit']} "
        f"fsync={s['fsync']} full_page_writes={s['full_page_writes']}; "
        f"{report['machine']['cpus']} CPUs; medians of {report['config']['rounds']} round(s)",
        "",
        f"{'scenario':<62} {'pgjobs':>11} {'minimal SQL':>12} {'ratio':>7} {'paired':>7}",
    ]
    for row in report["results"]:
        lines.append(f"{row['label']:<62} {row['pgjobs']:>11,.1f} {row['baseline']:>12,.1f} "
                     f"{row['ratio']:>7.2f} {row['ratio_paired']:>7.2f}  {row['unit']}")
    lines.append("ratio: of the medians; paired: the median of each round's own ratio")
    return "\n".join(lines)


def dumps(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, default=str)
