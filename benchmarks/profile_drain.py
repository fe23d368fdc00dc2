"""Drain pre-filled no-op jobs in this process, for a profiler to watch.

    PGJOBS_DATABASE_URL=... .venv/bin/py-spy record --format raw -o drain.txt -- \\
        .venv/bin/python benchmarks/profile_drain.py --jobs 20000 --kind async

Prints jobs/s, the worker's CPU per job and, when the server runs on this machine, the
server's CPU per job (every backend's, from /proc: the steadier figure for what a job
costs the database). Uses (and drops) a scratch schema, like ``pgjobs bench``. With
``--metrics``, the worker records its Prometheus metrics; with ``--tracing``, it traces
every job with the OpenTelemetry SDK (batched, to an exporter that drops the spans),
each job carrying the trace context of a request that enqueued it; ``--sampled R``:
only that fraction of those requests was sampled (head sampling; the jobs follow their
parent's decision); ``--tracing api``: the OpenTelemetry API alone, no SDK. The cost
of observability, against the same drain without it:
``ab_drain.py . . --after-flags="--metrics --tracing"``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

import psycopg
from psycopg import sql

from pgjobs import Worker, WorkerConfig
from pgjobs.ops.bench import Bench, BenchConfig, _open_pools, _task_name, batches, bench_app

TRACE: dict[str, list[tuple[int, float]]] = {"claim": [], "flush": []}


def trace_round_trips() -> None:
    """Wrap the claim and the outcome flush to record (rows, seconds) per round trip."""
    from pgjobs.worker.claimer import Claimer
    from pgjobs.worker.completer import Completer

    claim, flush = Claimer.claim, Completer.flush

    async def traced_claim(self: Claimer, limit: int, sweep: bool = False) -> Any:
        start = time.perf_counter()
        jobs = await claim(self, limit, sweep)
        TRACE["claim"].append((len(jobs or ()), time.perf_counter() - start))
        return jobs

    async def traced_flush(self: Completer) -> None:
        size, start = min(len(self.buffer), self.max_batch), time.perf_counter()
        await flush(self)
        TRACE["flush"].append((size, time.perf_counter() - start))

    Claimer.claim = traced_claim  # type: ignore[method-assign]
    Completer.flush = traced_flush  # type: ignore[method-assign]


def traced_by_requests(bench: Bench, sampled: float) -> None:
    """Give every job the trace context of the request that enqueued it (W3C
    traceparent, its sampled flag set for ``sampled`` of them), as tracing would."""
    from psycopg import sql

    with psycopg.connect(bench.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL(
            "UPDATE {} SET meta = jsonb_build_object('trace', jsonb_build_object("
            "'traceparent', '00-' || md5(id::text) || '-' || left(md5(id::text || 'p'), 16)"
            " || CASE WHEN random() < %s THEN '-01' ELSE '-00' END))").format(bench.jobs),
            (sampled,))
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(bench.jobs))


def observe(app: Any, metrics: bool, tracing_on: str | None) -> None:
    """Metrics and tracing on, as in production: spans recorded (when sampled) and
    exported by a batch processor."""
    if not (metrics or tracing_on):
        return
    from collections.abc import Sequence

    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from prometheus_client import CollectorRegistry

    from pgjobs.observability import prometheus, tracing

    class Dropped(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    if tracing_on == "api":
        tracing.instrument(app)  # the global provider: a no-op without an SDK
    elif tracing_on:
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Dropped()))
        tracing.instrument(app, provider)
    if metrics:
        prometheus.record(app, CollectorRegistry())


def server_cpu(dsn: str) -> float | None:
    """CPU seconds the server has used so far: the postmaster's own and its reaped
    children's, plus every live child's (from /proc; None when the server runs
    elsewhere or /proc cannot be read)."""
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("SHOW data_directory").fetchone()
        assert row is not None
        with open(os.path.join(row[0], "postmaster.pid")) as pidfile:
            postmaster = int(pidfile.readline())
        tick = os.sysconf("SC_CLK_TCK")

        def fields(pid: int | str) -> list[str]:
            with open(f"/proc/{pid}/stat") as stat:
                return stat.read().rsplit(")", 1)[1].split()

        own = fields(postmaster)  # [11:15]: utime, stime, cutime, cstime
        total = sum(int(v) for v in own[11:15])
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    child = fields(pid)
                except OSError:
                    continue
                if int(child[1]) == postmaster:
                    total += int(child[11]) + int(child[12])
        return total / tick
    except (OSError, ValueError, AssertionError, psycopg.Error):
        return None


def report_trace(elapsed: float) -> None:
    for name, calls in TRACE.items():
        if calls:
            rows = sum(c[0] for c in calls)
            busy = sum(c[1] for c in calls)
            print(f"  {name}: {len(calls)} round trips, {rows / len(calls):.1f} rows each, "
                  f"{busy / len(calls) * 1000:.2f} ms each, busy {busy / elapsed:.0%} of the time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--kind", default="async", choices=["sync", "async", "sync_tx",
                                                            "async_tx", "tx_effect",
                                                            "tx_effect_own"])
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--trace", action="store_true",
                        help="Count claims and outcome flushes, with their sizes and times.")
    parser.add_argument("--metrics", action="store_true", help="Prometheus metrics on.")
    parser.add_argument("--tracing", nargs="?", const="sdk", choices=["sdk", "api"],
                        help="OpenTelemetry tracing on, with the SDK (or the API alone).")
    parser.add_argument("--sampled", type=float, default=1.0,
                        help="With --tracing: the fraction of jobs whose trace is sampled.")
    parser.add_argument("--batch", action="store_true",
                        help="Enqueue the jobs in one batch (as pgjobs bench's batch scenario).")
    args = parser.parse_args()
    if args.trace:
        trace_round_trips()
    bench = Bench(os.environ["PGJOBS_DATABASE_URL"], BenchConfig(), progress=None)
    with bench.scratch_schema():
        with psycopg.connect(bench.dsn, autocommit=True) as conn:  # tx_effect's table
            conn.execute(sql.SQL(batches.TABLES).format(**batches.tables(bench.schema)))
        if args.batch:
            batches.fill(bench, _task_name(args.kind), args.jobs, batched=True)
        else:
            bench.fill(args.jobs, _task_name(args.kind))
        app = bench_app(bench.dsn, bench.schema)
        if args.tracing:
            traced_by_requests(bench, args.sampled)
        observe(app, args.metrics, args.tracing)
        if args.kind.endswith("_tx") or args.kind == "tx_effect_own":
            _open_pools(bench.dsn, args.concurrency)

        async def drain() -> dict[str, int]:
            if args.kind == "async_tx":
                from pgjobs.ops.bench import _POOLS

                await _POOLS["async"].open(wait=True)
            config = WorkerConfig(concurrency=args.concurrency, burst=True, listen=False)
            return dict(await Worker(app, config).run())

        server = server_cpu(bench.dsn)
        start, cpu = time.perf_counter(), time.process_time()
        stats = asyncio.run(drain())
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        server_after = server_cpu(bench.dsn)
    on_server = ("" if server is None or server_after is None else
                 f"; server CPU {(server_after - server) / args.jobs * 1e6:.0f} us/job")
    kind = f"{args.kind} in a batch" if args.batch else args.kind
    print(f"{kind} c{args.concurrency}: {stats} in {elapsed:.2f} s = "
          f"{args.jobs / elapsed:,.0f} jobs/s; worker CPU {cpu / elapsed:.0%} of one core, "
          f"{cpu / args.jobs * 1e6:.0f} us/job{on_server}")
    report_trace(elapsed)


if __name__ == "__main__":
    main()
