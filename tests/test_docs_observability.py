"""The worked examples of docs/observability.md run as printed, and the Grafana dashboard
there graphs only metrics that pgjobs exports."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from pgjobs.observability import exporter, prometheus

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGE = (DOCS / "observability.md").read_text()


def example(name: str) -> str:
    """The ```python block of the page that starts with ``# file: <name>``."""
    for block in re.findall(r"```python\n(.*?)```", PAGE, re.S):
        if block.startswith(f"# file: {name}\n"):
            return str(block)
    raise AssertionError(f"no example {name} in docs/observability.md")


def run(tmp_path: Path, name: str, dsn: str) -> list[str]:
    (tmp_path / name).write_text(example(name))
    done = subprocess.run([sys.executable, name], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "PGJOBS_DATABASE_URL": dsn},
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.mark.slow
def test_the_error_reporting_example(tmp_path: Path, fresh_dsn: str) -> None:
    counts, *reported = run(tmp_path, "errors_demo.py", fresh_dsn)
    assert eval(counts) == {"retry": 1, "cancelled": 1, "dead": 1}
    assert reported == [
        "charge job 1 attempt 1: ConnectionError('payment provider down for order 42')",
        "charge job 1 attempt 2: ConnectionError('payment provider down for order 42')",
        "PAGE: charge job 1 is dead: payment provider down for order 42",
    ]


@pytest.mark.slow
def test_the_per_tenant_example(tmp_path: Path, fresh_dsn: str) -> None:
    assert run(tmp_path, "tenant_demo.py", fresh_dsn) == [
        "invoice {'tenant': 'acme'} invoice of 10 for acme",
        "notify {'tenant': 'acme'} notified acme",
        "invoice {'tenant': 'globex'} invoice of 20 for globex",
        "notify {'tenant': 'globex'} notified globex",
    ]


def exported() -> dict[str, set[str]]:
    """Each metric pgjobs exports, with the series names it appears as."""
    registry = CollectorRegistry()
    prometheus.WorkerMetrics(registry)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
                "gauge": ("",)}
    found = {family.name: {family.name + s for s in suffixes[family.type]}
             for family in registry.collect()}
    names = [metric for metric, _, _ in exporter.FAMILIES.values()]
    names += ["pgjobs_exporter_up", "pgjobs_exporter_scrape_duration_seconds"]
    return found | {name: {name} for name in names}


def test_the_dashboard_and_the_page_use_only_exported_metrics_and_graph_all() -> None:
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    exprs = " ".join(target["expr"] for panel in dashboard["panels"]
                     for target in panel.get("targets", []))
    series = set().union(*exported().values())
    assert set(re.findall(r"pgjobs_[a-z_]+", exprs)) <= series
    assert set(re.findall(r"pgjobs_[a-z_]+", PAGE)) <= series | set(exported())
    graphed = set(re.findall(r"pgjobs_[a-z_]+", exprs))
    assert [name for name, names in exported().items() if not names & graphed] == []
