"""benchmarks/charts.py draws well-formed SVG from a peers.py report, with every
system's value and its ratio to the ceiling, and line charts (benchmarks/soak.py's)."""

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


def test_a_line_chart_has_a_line_per_series_its_notes_and_round_ticks() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from charts import lines_svg, ticks
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert ticks(55_000) == [0, 20_000, 40_000]
    assert ticks(1.0) == [0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
    series = {"jobs heap": [(0.0, 1.0), (30.0, 14.5), (60.0, 14.8)],
              "jobs indexes": [(0.0, 0.5), (30.0, 3.1), (60.0, 3.2)]}
    root = ET.fromstring(lines_svg("Sizes", series, "MB",
                                   notes={"jobs heap": "14.5 -> 14.8"}))
    lines = root.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(lines) == 2 and len(lines[0].get("points", "").split()) == 3
    labels = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert {"Sizes", "jobs heap  14.5 -> 14.8", "jobs indexes", "MB", "minutes"} <= set(labels)
