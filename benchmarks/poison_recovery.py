"""How long innocent jobs wait after a poison job crashed the worker that held them.

    .venv/bin/python benchmarks/poison_recovery.py [--workers 4] [--concurrency 16]
        [--lease 5] [--dsn URL]

One worker process claims 16 jobs (concurrency 16): 15 innocent ones and one that ends
its process with os._exit whenever it runs (benchmarks/poison_app.py). Once the other
workers are up (4 in all), the poison job strikes; like a supervisor, this script starts
a new worker in place of every one that dies. It reports, from the database clock, how
long after the first crash the 15 innocent jobs had all succeeded (target: within two
lease periods), and when the poison job was dead (after its recovery budget).

--no-isolate runs the workers with --no-isolate-suspects, for comparison. Without --dsn
it uses a fresh database ``poison_bench`` on the server of `pgjobs dev
start` (recreated on every run).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

import pgjobs
from pgjobs.ops import migrate

HERE = Path(__file__).resolve().parent
DATABASE = "poison_bench"
INNOCENT = 15


def fresh_database() -> str:
    done = subprocess.run([sys.executable, "-m", "pgjobs", "dev", "start"], check=True,
                          capture_output=True, text=True)
    server = done.stdout.strip().splitlines()[-1]
    with psycopg.connect(server, autocommit=True) as conn:
        name = sql.Identifier(DATABASE)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
    return make_conninfo(server, dbname=DATABASE)


def scalar(dsn: str, text: str, *params: Any) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(text, params).fetchone()
        return None if row is None else row[0]


def wait_for(dsn: str, text: str, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not scalar(dsn, text):
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up after {timeout} s waiting for {what}")
        time.sleep(0.05)


class Fleet:
    """Worker processes; a dead one is replaced, as `pgjobs worker --processes` would."""

    def __init__(self, dsn: str, args: argparse.Namespace) -> None:
        self.env = {**os.environ, "PGJOBS_DATABASE_URL": dsn,
                    "POISON_WORKERS": str(args.workers),
                    "POISON_JOB_SECONDS": str(args.job_seconds),
                    "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
        self.command = [sys.executable, "-m", "pgjobs", "worker", "--app", "poison_app:app",
                        "--concurrency", str(args.concurrency), "--lease", str(args.lease),
                        "--recovery-budget", str(args.budget),
                        "--isolate-suspects" if args.isolate else "--no-isolate-suspects"]
        self.log = tempfile.NamedTemporaryFile(prefix="poison-bench-", suffix=".log",  # noqa: SIM115
                                               delete=False)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.replaced = 0

    def spawn(self) -> None:
        self.procs.append(subprocess.Popen(self.command, env=self.env, cwd=HERE,
                                           stdout=self.log, stderr=subprocess.STDOUT))

    def respawn(self) -> None:
        for proc in [p for p in self.procs if p.poll() is not None]:
            self.procs.remove(proc)
            self.replaced += 1
            self.spawn()

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


RESULT = """
SELECT extract(epoch FROM max(finished_at) FILTER (WHERE task = 'poison.innocent')
                          - (SELECT min(at) FROM poison_crashes)),
       count(*) FILTER (WHERE task = 'poison.innocent' AND state = 'succeeded'),
       max(recoveries) FILTER (WHERE task = 'poison.innocent'),
       extract(epoch FROM max(finished_at) FILTER (WHERE task = 'poison.poison')
                          - (SELECT min(at) FROM poison_crashes)),
       max(state) FILTER (WHERE task = 'poison.poison'),
       max(recoveries) FILTER (WHERE task = 'poison.poison'),
       (SELECT count(*) FROM poison_crashes)
FROM pgjobs.jobs
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help=f"an empty database (default: {DATABASE!r} on the "
                                      "server of `pgjobs dev start`)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--lease", type=float, default=5.0, help="seconds")
    parser.add_argument("--budget", type=int, default=3, help="--recovery-budget")
    parser.add_argument("--job-seconds", type=float, default=0.2,
                        help="how long an innocent job runs once recovered")
    parser.add_argument("--no-isolate", dest="isolate", action="store_false",
                        help="run the workers with --no-isolate-suspects (one suspect at a "
                             "time, in the worker's own process)")
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args()
    dsn = args.dsn or fresh_database()
    migrate.upgrade(dsn, "pgjobs")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS poison_crashes")
        conn.execute("CREATE TABLE poison_crashes (pid int, at timestamptz NOT NULL "
                     "DEFAULT clock_timestamp())")
    fleet = Fleet(dsn, args)
    try:
        fleet.spawn()  # the victim: it alone is up when the jobs arrive
        wait_for(dsn, "SELECT count(*) FROM pgjobs.workers WHERE state = 'running'",
                 "the first worker", 60)
        producer = pgjobs.App(dsn=dsn, strict_names=False)
        rows = [{"n": n} for n in range(INNOCENT)]
        with psycopg.connect(dsn) as conn:
            producer.task("poison.innocent").enqueue_many(conn, rows[:7])
            producer.enqueue(conn, "poison.poison")
            producer.task("poison.innocent").enqueue_many(conn, rows[7:])
        wait_for(dsn, "SELECT count(*) = 16 FROM pgjobs.jobs WHERE state = 'running'",
                 "the first worker to hold all 16 jobs", 60)
        for _ in range(args.workers - 1):
            fleet.spawn()
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            fleet.respawn()
            if scalar(dsn, "SELECT count(*) FROM pgjobs.jobs WHERE state NOT IN "
                           "('succeeded', 'dead')") == 0:
                break
            time.sleep(0.1)
        else:
            raise SystemExit(f"not done after {args.timeout} s; worker log: {fleet.log.name}")
    finally:
        fleet.stop()
    (innocent_s, succeeded, innocent_recoveries, poison_s, poison_state,
     poison_recoveries, crashes) = _result(dsn)
    print(f"{args.workers} workers x concurrency {args.concurrency}, lease {args.lease:g} s, "
          f"recovery budget {args.budget}, innocent jobs {args.job_seconds:g} s once recovered, "
          f"suspects {'isolated' if args.isolate else 'in-process'}")
    print(f"innocent jobs succeeded: {succeeded}/{INNOCENT}, the last {innocent_s:.1f} s after "
          f"the first crash ({innocent_s / args.lease:.2f} leases; recovered at most "
          f"{innocent_recoveries} time(s))")
    print(f"poison job: {poison_state} {poison_s:.1f} s after the first crash, after "
          f"{crashes} crash(es) ({poison_recoveries} recoveries); workers replaced "
          f"{fleet.replaced}")
    print(f"worker log: {fleet.log.name}")


def _result(dsn: str) -> tuple[Any, ...]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(RESULT).fetchone()
        assert row is not None
        return tuple(float(v) if hasattr(v, "as_tuple") else v for v in row)


if __name__ == "__main__":
    main()
