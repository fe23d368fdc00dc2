"""`pgjobs bench` and benchmarks/soak.py run end to end on a tiny size and report what
they promise (no timings are asserted: these are smoke tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.helpers import query

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent

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


def test_soak_samples_every_figure_and_draws_them(fresh_dsn: str, tmp_path: Path) -> None:
    """benchmarks/soak.py, a few seconds of it: samples of every table, the rates and each
    process's RSS, the charts, and the summary (no figure is asserted to be flat)."""
    out = tmp_path / "soak"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--dsn", fresh_dsn,
         "--seconds", "6", "--every", "2", "--rate", "100", "--warmup", "0",
         "--out", str(out), "--worker-log", str(tmp_path / "workers.log")],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr + (tmp_path / "workers.log").read_text()
    report = json.loads(out.with_name("soak.json").read_text())
    samples = report["samples"]
    assert len(samples) >= 4 and samples[-1]["t"] >= 6
    last = samples[-1]
    assert {"jobs", "batches", "batch_deltas", "periodic"} <= set(last["tables"])
    assert {"live", "dead", "heap", "indexes", "total"} <= set(last["tables"]["jobs"])
    assert "jobs_pkey" in last["jobs_indexes"]
    assert last["enqueued"] > 0 and last["finished_rate"] > 0
    assert set(last["rss"]) == {"supervisor", "worker 1", "worker 2"}
    assert all(20 < mb < 500 for mb in last["rss"].values())
    summary = report["summary"]
    assert {"first", "last", "slope_per_hour"} <= set(summary["sizes"]["jobs heap"])
    assert summary["rate"]["enqueued by the producer"]["last"] > 0
    for chart in ("sizes", "dead", "rss", "rate"):
        root = ET.parse(out.with_name(f"soak-{chart}.svg")).getroot()  # well-formed
        assert root.find("{http://www.w3.org/2000/svg}polyline") is not None
    assert "worker 2" in out.with_name("soak-rss.svg").read_text()
    assert "median of the first and the last third" in done.stdout
    leftovers = query(fresh_dsn, "SELECT count(*) FROM pgjobs.workers "
                                 "WHERE state <> 'stopped'")
    assert leftovers == [(0,)]  # the workers were stopped
