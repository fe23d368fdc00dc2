"""enqueue_many's two paths side by side: the single INSERT statement and binary COPY.

    PGJOBS_DATABASE_URL=... .venv/bin/python benchmarks/enqueue_many_paths.py \\
        --sizes 20,100,500,2000,10000 --rows 20000 --rounds 3

For each call size, alternating, a committed ``enqueue_many`` call is timed on each path
(``COPY_MIN_ROWS`` set out of reach, then to 1): medians of wall time and of client CPU
per call, and INSERT / COPY (above 1: COPY is faster). This is where ``COPY_MIN_ROWS``
comes from. Scratch schema, dropped.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import psycopg

from pgjobs import App
from pgjobs.db import enqueue as _enqueue
from pgjobs.ops.bench import Bench, BenchConfig


def timed_calls(conn: psycopg.Connection[object], task: object, size: int, calls: int,
                copy: bool) -> tuple[float, float]:
    """Median wall and client CPU seconds of ``calls`` committed calls of ``size`` rows."""
    _enqueue.COPY_MIN_ROWS = 1 if copy else 10**9
    rows = [{"n": n} for n in range(size)]
    walls, cpus = [], []
    for _ in range(calls):
        wall, cpu = time.perf_counter(), time.process_time()
        task.enqueue_many(conn, rows)  # type: ignore[attr-defined]
        conn.commit()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20,100,500,2000,10000")
    parser.add_argument("--rows", type=int, default=20_000, help="rows per size and path")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    bench = Bench(os.environ["PGJOBS_DATABASE_URL"], BenchConfig(), progress=None)
    results: dict[tuple[int, bool], list[tuple[float, float]]] = {}
    with bench.scratch_schema(), psycopg.connect(bench.dsn) as conn:
        # By name (any args): a reference of a producer that does not import the tasks.
        producer = App(dsn=bench.dsn, schema=bench.schema, strict_names=False)
        task = producer.task("numbered")
        for r in range(args.rounds):
            for size in (int(s) for s in args.sizes.split(",")):
                calls = max(3, args.rows // size)
                for copy in (False, True) if r % 2 == 0 else (True, False):
                    results.setdefault((size, copy), []).append(
                        timed_calls(conn, task, size, calls, copy))
    print(f"{'rows/call':>9}  {'INSERT ms (cpu)':>16}  {'COPY ms (cpu)':>16}  INSERT/COPY")
    for size in (int(s) for s in args.sizes.split(",")):
        (iw, ic), (cw, cc) = ((statistics.median(v[0] for v in results[(size, c)]),
                               statistics.median(v[1] for v in results[(size, c)]))
                              for c in (False, True))
        print(f"{size:>9}  {iw * 1e3:8.2f} ({ic * 1e3:5.2f})  {cw * 1e3:8.2f} ({cc * 1e3:5.2f})"
              f"  {iw / cw:10.2f}")


if __name__ == "__main__":
    main()
