"""``pgjobs bench``: pgjobs' throughput and latency next to minimal SQL, side by side."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ...core.errors import MissingDatabaseURL
from ..devserver import LocalServer
from .common import Target

FC = TypeVar("FC", bound=Callable[..., Any])


def _bench_option(name: str, *decls: str, **kwargs: Any) -> Callable[[FC], FC]:
    envvar = "PGJOBS_BENCH_" + name.lstrip("-").replace("-", "_").upper()
    return click.option(name, *decls, envvar=envvar, show_envvar=True, show_default=True,
                        **kwargs)


@click.command()
@_bench_option("--rounds", type=click.IntRange(min=1), default=3, help="Rounds (medians).")
@_bench_option("--scenarios", default="enqueue_single,enqueue_bulk,drain,latency",
               help="Comma-separated: enqueue_single, enqueue_bulk, drain, latency, batch.")
@_bench_option("--single", type=click.IntRange(min=1), default=2000,
               help="Jobs per single-enqueue measurement.")
@_bench_option("--enqueuers", type=click.IntRange(min=1), default=1,
               help="Concurrent single-job enqueuers (one connection each).")
@_bench_option("--bulk", type=click.IntRange(min=1), default=50_000,
               help="Jobs per bulk-enqueue measurement.")
@_bench_option("--bulk-batch", type=click.IntRange(min=1), default=10_000,
               help="Rows per enqueue_many call (and per COPY).")
@_bench_option("--drain", type=click.IntRange(min=1), default=20_000,
               help="Pre-filled jobs per drain measurement.")
@_bench_option("--processes", type=click.IntRange(min=1), default=2,
               help="Worker processes of the multi-process drain.")
@_bench_option("--concurrency", type=click.IntRange(min=1), default=10,
               help="Worker concurrency in drain and latency.")
@_bench_option("--drain-kinds", default="sync,async,sync_tx,async_tx",
               help="Handlers to drain: sync, async, sync_tx, async_tx (_tx: the handler "
                    "completes its job with current_job().complete(conn)).")
@_bench_option("--latency-rate", type=click.FloatRange(min=1), default=50.0,
               help="Jobs per second in the latency scenario.")
@_bench_option("--latency-seconds", type=click.FloatRange(min=0.1), default=5.0,
               help="Seconds of enqueueing in the latency scenario.")
@_bench_option("--batch-jobs", type=click.IntRange(min=1), default=4_000,
               help="Jobs per measurement of the batch scenario.")
@_bench_option("--batch-concurrency", type=click.IntRange(min=1), default=16,
               help="Worker concurrency (and raw-SQL threads per process) in the batch "
                    "scenario.")
@_bench_option("--json", "json_path", metavar="PATH",
               help="Also write the results as JSON to PATH ('-': JSON on stdout, no table).")
@_bench_option("--embedded", is_flag=True,
               help="Start a throwaway local PostgreSQL (default durability) instead of --dsn.")
@click.pass_obj
def bench(obj: Target, rounds: int, scenarios: str, single: int, enqueuers: int, bulk: int,
          bulk_batch: int, drain: int, processes: int, concurrency: int, drain_kinds: str,
          latency_rate: float, latency_seconds: float, batch_jobs: int,
          batch_concurrency: int, json_path: str | None, embedded: bool) -> None:
    """Measure enqueue, drain and latency against minimal hand-written SQL, side by side.

    Creates a scratch schema (its own tables and NOTIFY channel: your queues and workers
    never see its jobs) and drops it afterwards. Progress goes to stderr.
    """
    from .. import bench as _bench

    config = _bench.BenchConfig(
        scenarios=_choices(scenarios, _bench.SCENARIOS, "--scenarios"),
        drain_kinds=_choices(drain_kinds, _bench.DRAIN_KINDS, "--drain-kinds"),
        rounds=rounds, single=single, enqueuers=enqueuers, bulk=bulk, bulk_batch=bulk_batch,
        drain=drain, processes=processes, concurrency=concurrency,
        latency_rate=latency_rate, latency_seconds=latency_seconds, batch_jobs=batch_jobs,
        batch_concurrency=batch_concurrency)
    server = None
    if embedded:
        server = LocalServer(Path(tempfile.mkdtemp(prefix="pgjobs-bench-")) / "data")
        click.echo("starting a throwaway PostgreSQL ...", err=True)
        dsn = server.start()
    elif obj.dsn_option:
        dsn = obj.dsn_option
    else:
        raise click.ClickException(f"{MissingDatabaseURL()}; or pass --embedded")
    try:
        report = _bench.run_bench(dsn, config)
    finally:
        if server is not None:
            server.destroy()
            shutil.rmtree(server.datadir.parent, ignore_errors=True)
    if json_path == "-":
        click.echo(_bench.dumps(report))
        return
    click.echo(_bench.format_table(report))
    if json_path:
        Path(json_path).write_text(_bench.dumps(report) + "\n")


def _choices(value: str, known: tuple[str, ...], flag: str) -> tuple[str, ...]:
    chosen = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [v for v in chosen if v not in known]
    if unknown or not chosen:
        raise click.BadParameter(f"choose from {', '.join(known)}", param_hint=flag)
    return chosen
