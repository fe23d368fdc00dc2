"""`pgjobs bench` runs end to end on a tiny size and reports what it promises (no timings
are asserted: this is a smoke test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import query

pytestmark = pytest.mark.slow

TINY = ["--rounds", "1", "--single", "5", "--bulk", "20", "--bulk-batch", "10",
        "--drain", "20", "--processes", "1", "--latency-rate", "20",
        "--latency-seconds", "0.2"]


def pgjobs(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pgjobs", *args], capture_output=True,
                          text=True, timeout=300, env=env)


def test_bench_reports_every_scenario_as_json_and_cleans_up(fresh_dsn: str) -> None:
    done = pgjobs("--dsn", fresh_dsn, "bench", *TINY, "--json", "-")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert {"server", "machine", "config", "results", "runs", "pgjobs_version"} <= set(report)
    assert {"server_version", "synchronous_commit", "fsync"} <= set(report["server"])
    names = {row["name"] for row in report["results"]}
    assert {"enqueue_single", "enqueue_single_notify_cost", "enqueue_bulk",
            "drain_minimal_claims_of_10", "latency_p50", "latency_p99"} <= names
    assert {f"drain_{kind}_p1" for kind in ("sync", "async", "sync_tx", "async_tx")} <= names
    for row in report["results"]:
        assert {"label", "unit", "pgjobs", "baseline", "ratio", "ratio_paired",
                "pgjobs_runs"} <= set(row)
        if row["unit"] == "jobs/s":  # (a latency sample may be below zero: see _bench)
            assert row["pgjobs"] > 0 and row["baseline"] > 0
    assert "[round 1/1]" in done.stderr  # progress while it runs
    leftovers = query(fresh_dsn, "SELECT nspname FROM pg_namespace "
                                 "WHERE nspname LIKE 'pgjobs_bench_%'")
    assert leftovers == []


def test_bench_prints_a_table_by_default(fresh_dsn: str) -> None:
    done = pgjobs("--dsn", fresh_dsn, "bench", *TINY, "--scenarios", "enqueue_single")
    assert done.returncode == 0, done.stderr
    assert "synchronous_commit=" in done.stdout and "ratio" in done.stdout


def test_bench_without_a_database_names_the_ways_to_give_one() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PGJOBS_DATABASE_URL"}
    done = pgjobs("bench", env=env)
    assert done.returncode == 1
    assert "pgjobs dev start" in done.stderr and "--embedded" in done.stderr
