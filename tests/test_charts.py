"""benchmarks/charts.py draws well-formed SVG from a peers.py report, with every
system's value and its ratio to the ceiling."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

REPORT = {
    "systems": ["minimal", "pgjobs", "pgqueuer"],
    "versions": {"minimal": "ceiling", "pgjobs": "0.1.0", "pgqueuer": "1.6.0"},
    "args": {"batch": 1000},
    "medians": {
        "enqueue_single": {"minimal": 1700.0, "pgjobs": 1300.0, "pgqueuer": 1250.0},
        "drain_best": {"minimal": 25000.0, "pgjobs": 15000.0, "pgqueuer": 4900.0},
        "latency_p50": {"minimal": 1.0, "pgjobs": 1.2, "pgqueuer": 4.0},
        "latency_p90": {"minimal": 1.8, "pgjobs": 2.0, "pgqueuer": 6.3},
        "latency_p99": {"minimal": 2.6, "pgjobs": 2.9, "pgqueuer": 9.4},
    },
}


def texts(path: Path) -> list[str]:
    root = ET.parse(path).getroot()  # well-formed, or this raises
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text")]


def test_charts_show_each_value_and_the_ratio_to_the_ceiling(tmp_path: Path) -> None:
    results = tmp_path / "peers.json"
    results.write_text(json.dumps(REPORT))
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "charts.py"), str(results),
                    "--out", str(tmp_path / "peers")], check=True, capture_output=True)
    throughput = texts(tmp_path / "peers-throughput.svg")
    assert "drain, best configuration" in throughput
    assert "15,000  (0.60x ceiling)" in throughput
    assert "4,900  (0.20x ceiling)" in throughput
    assert "1,700" in throughput  # the ceiling itself, without a ratio
    latency = texts(tmp_path / "peers-latency.svg")
    assert {"p50", "p90", "p99"} <= set(latency)
    assert {"1.20", "2.90", "9.40"} <= set(latency)
