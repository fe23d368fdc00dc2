"""Server time of every dashboard page with a million jobs in the table.

    .venv/bin/python benchmarks/dashboard_pages.py                 # a throwaway server
    .venv/bin/python benchmarks/dashboard_pages.py --dsn URL --jobs 1000000

Fills ``jobs`` with the production-like mix of tests/dashboard_data.py (70% succeeded
over a day, 24% waiting, 3% dead, a rare queue, batches; VACUUM ANALYZE after), then
requests each page ``--rounds`` times in rotation through the ASGI app in process
(Starlette's test client: the time from request to the last byte of the response,
rendering included, no network), and prints the median and the 90th percentile per
page. ``--dsn`` must name an empty database: the jobs go into its ``pgjobs`` schema.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.dashboard_data

from starlette.testclient import TestClient

from pgjobs.dashboard import create_app
from pgjobs.ops import migrate
from pgjobs.ops.devserver import LocalServer
from tests.dashboard_data import fill

WORKERS = """
INSERT INTO pgjobs.workers (host, pid, queues, concurrency, meta)
SELECT 'host-' || w, 1000 + w, '{mail,reports,billing,default,images,webhooks,rare}', 16,
       '{"lease": 30}'
FROM generate_series(1, 8) AS w;
"""
PERIODIC = """
INSERT INTO pgjobs.periodic (name, schedule, task, queue, last_tick)
SELECT 'schedule ' || p, '*/5 * * * *', 'task_' || p, 'default', now()
FROM generate_series(1, 20) AS p
"""


def pages(dsn: str, jobs: int) -> list[str]:
    with psycopg.connect(dsn) as conn:
        dead, batch = conn.execute(
            "SELECT (SELECT max(id) FROM pgjobs.jobs WHERE state = 'dead'), "
            "(SELECT max(id) FROM pgjobs.batches WHERE parent_id IS NULL)").fetchone() or (1, 1)
    return [
        "/", "/jobs", f"/jobs?before={jobs // 2}", "/jobs?state=dead",
        f"/jobs?state=dead&before={jobs // 10}", "/jobs?state=available&queue=mail",
        "/jobs?queue=rare", "/jobs?key=newsletter_id&value=7",
        "/jobs?state=succeeded&task=task_3&key=user_id&value=4242", f"/jobs?batch={batch}",
        f"/jobs/{dead}", "/batches", f"/batches?before={batch}", f"/batches/{batch}",
        "/periodic", "/workers", "/jobs/bulk?action=retry&state=dead",
    ]


def measure(dsn: str, paths: list[str], rounds: int) -> dict[str, list[float]]:
    app = create_app(dsn, auth=None, pool_size=2)
    times: dict[str, list[float]] = {path: [] for path in paths}
    with TestClient(app) as client:
        for path in paths:  # warm the pool, the templates and PostgreSQL's caches
            assert client.get(path).status_code == 200, path
        for r in range(rounds):
            for path in paths[r % len(paths):] + paths[:r % len(paths)]:
                start = time.perf_counter()
                response = client.get(path)
                times[path].append(time.perf_counter() - start)
                assert response.status_code == 200, (path, response.text[:300])
    app.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="an empty database (default: a throwaway server)")
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    server = None
    if args.dsn:
        dsn = args.dsn
    else:
        server = LocalServer(Path(tempfile.mkdtemp(prefix="pgjobs-dashbench-")) / "data")
        dsn = server.start()
    try:
        migrate.upgrade(dsn)
        started = time.perf_counter()
        with psycopg.connect(dsn) as conn:
            conn.execute(WORKERS)
            conn.execute(PERIODIC)
            fill(conn, args.jobs)
            size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size("
                                "'pgjobs.jobs'))").fetchone()
        print(f"{args.jobs:,} jobs loaded in {time.perf_counter() - started:.0f} s "
              f"(jobs and its indexes: {size[0] if size else '?'}); "
              f"{args.rounds} requests per page\n")
        times = measure(dsn, pages(dsn, args.jobs), args.rounds)
        print(f"{'page':<58} {'median':>8} {'p90':>8}")
        for path, values in times.items():
            p90 = statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]
            print(f"{path:<58} {statistics.median(values) * 1e3:6.1f}ms {p90 * 1e3:6.1f}ms")
    finally:
        if server is not None:
            server.destroy()


if __name__ == "__main__":
    main()
