"""SVG charts of a peers.py run: jobs/s by scenario, and latency percentiles (and the
line charts of other benchmarks, such as soak.py: ``lines_svg``).

    .venv/bin/python benchmarks/charts.py docs/benchmarks-peers.json --out docs/benchmarks

writes OUT-throughput.svg (one panel per throughput scenario, a bar per system, each
labelled with its value and its ratio to the ceiling) and OUT-latency.svg (p50, p90 and
p99 of every system, grouped). Plain SVG written by hand: no plotting library, so the
charts can be made again anywhere the JSON is, and they read the same in light and dark
pages (text is drawn in a neutral grey).
"""

from __future__ import annotations

import argparse
import json
import math
from html import escape
from pathlib import Path
from typing import Any

COLOURS = {"minimal": "#9e9e9e", "pgjobs": "#2b7bb9", "pgqueuer": "#e08a2c",
           "procrastinate": "#5aa05a"}
OTHER = "#8e6bb8"
PALETTE = ["#2b7bb9", "#e08a2c", "#5aa05a", "#8e6bb8", "#c0504d", "#9e9e9e"]
TEXT = "#707070"
FONT = 'font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif"'
THROUGHPUT = [
    ("enqueue_single", "enqueue, 1 job per transaction"),
    ("enqueue_bulk", "bulk enqueue, {batch} rows per call"),
    ("drain_p1", "drain, 1 process, defaults"),
    ("drain_p2", "drain, 2 processes, defaults"),
    ("drain_best", "drain, best configuration"),
]
LATENCY = [("latency_p50", "p50"), ("latency_p90", "p90"), ("latency_p99", "p99")]


def colour(system: str) -> str:
    return COLOURS.get(system, OTHER)


def number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def text(x: float, y: float, body: str, size: int = 12, anchor: str = "start",
         weight: str = "normal", fill: str = TEXT) -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}" fill="{fill}" {FONT}>{escape(body)}</text>')


def legend(systems: list[str], versions: dict[str, str], x: float, y: float) -> list[str]:
    parts = []
    for system in systems:
        label = system if system == "minimal" else f"{system} {versions.get(system, '')}"
        if system == "minimal":
            label = "minimal queue (ceiling)"
        parts.append(f'<rect x="{x:.1f}" y="{y - 10:.1f}" width="12" height="12" '
                     f'fill="{colour(system)}"/>')
        parts.append(text(x + 17, y, label.strip()))
        x += 24 + 7.2 * len(label)
    return parts


def throughput_svg(report: dict[str, Any]) -> str:
    systems = report["systems"]
    medians = report["medians"]
    batch = report.get("args", {}).get("batch", 1000)
    panels = [(key, title.format(batch=f"{batch:,}")) for key, title in THROUGHPUT
              if key in medians]
    bar, gap, label_w, panel_gap = 22, 6, 150, 26
    width = 760
    chart_w = width - label_w - 150
    y = 58
    body: list[str] = [text(16, 24, "Jobs per second (higher is better)", 16, weight="600")]
    body += legend(systems, report.get("versions", {}), 16, 44)
    for key, title in panels:
        values = medians[key]
        top = max(values.values()) or 1.0
        ceiling = values.get("minimal")
        body.append(text(16, y + 14, title, 13, weight="600"))
        y += 22
        for system in systems:
            if system not in values:
                continue
            value = values[system]
            w = max(1.0, chart_w * value / top)
            body.append(f'<rect x="{label_w:.1f}" y="{y:.1f}" width="{w:.1f}" '
                        f'height="{bar}" fill="{colour(system)}" rx="2"/>')
            body.append(text(label_w - 8, y + 15, system, anchor="end"))
            note = number(value)
            if ceiling and system != "minimal":
                note += f"  ({value / ceiling:.2f}x ceiling)"
            body.append(text(label_w + w + 6, y + 15, note))
            y += bar + gap
        y += panel_gap - gap
    return svg(width, y + 10, body)


def latency_svg(report: dict[str, Any]) -> str:
    systems = report["systems"]
    medians = report["medians"]
    rows = [(key, label) for key, label in LATENCY if key in medians]
    width, height = 760, 330
    left, bottom, top_pad = 60, 270, 70
    plot_h = bottom - top_pad
    top = max(v for key, _ in rows for v in medians[key].values()) if rows else 1.0
    scale = plot_h / (top * 1.1)
    group_w = (width - left - 20) / max(1, len(rows))
    bar = min(36.0, (group_w - 30) / max(1, len(systems)))
    body: list[str] = [text(16, 24, "Commit to handler start, ms (lower is better)", 16,
                            weight="600")]
    body += legend(systems, report.get("versions", {}), 16, 44)
    body.append(f'<line x1="{left}" y1="{bottom}" x2="{width - 20}" y2="{bottom}" '
                f'stroke="{TEXT}" stroke-width="1"/>')
    for tick in ticks(top * 1.1):
        y = bottom - tick * scale
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - 20}" y2="{y:.1f}" '
                    f'stroke="{TEXT}" stroke-opacity="0.25" stroke-width="1"/>')
        body.append(text(left - 6, y + 4, f"{tick:g}", 11, anchor="end"))
    for i, (key, label) in enumerate(rows):
        x0 = left + i * group_w + (group_w - bar * len(systems)) / 2
        for j, system in enumerate(systems):
            value = medians[key].get(system)
            if value is None:
                continue
            h = value * scale
            x = x0 + j * bar
            body.append(f'<rect x="{x + 2:.1f}" y="{bottom - h:.1f}" width="{bar - 4:.1f}" '
                        f'height="{h:.1f}" fill="{colour(system)}" rx="2"/>')
            body.append(text(x + bar / 2, bottom - h - 4, number(value), 10, anchor="middle"))
        body.append(text(left + i * group_w + group_w / 2, bottom + 20, label, 13,
                         anchor="middle", weight="600"))
    return svg(width, height, body)


def ticks(top: float) -> list[float]:
    """About five round tick values from 0 to ``top`` (steps of 1, 2, 2.5 or 5 times a
    power of ten)."""
    raw = top / 5 if top > 0 else 1.0
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(power * m for m in (1, 2, 2.5, 5, 10) if power * m >= raw * (1 - 1e-9))
    return [step * k for k in range(int(top / step + 1e-9) + 1)]


def lines_svg(title: str, series: dict[str, list[tuple[float, float]]], unit: str,
              x_label: str = "minutes", notes: dict[str, str] | None = None) -> str:
    """One panel of lines, one per series of (x, y) points, on a y axis from zero, with a
    legend that gives each series its colour and its note (e.g. first -> last)."""
    width, height = 760, 360
    left, right, top_pad, bottom = 70, 20, 48 + 18 * len(series), 320
    height += 18 * len(series)
    bottom += 18 * len(series)
    points = [p for values in series.values() for p in values]
    x_top = max((x for x, _ in points), default=1.0) or 1.0
    y_top = max((y for _, y in points), default=1.0) * 1.1 or 1.0
    plot_w, plot_h = width - left - right, bottom - top_pad
    sx, sy = plot_w / x_top, plot_h / y_top
    body: list[str] = [text(16, 24, title, 16, weight="600")]
    for i, label in enumerate(series):
        y = 46 + 18 * i
        fill = PALETTE[i % len(PALETTE)]
        body.append(f'<rect x="16" y="{y - 10}" width="12" height="12" fill="{fill}"/>')
        note = (notes or {}).get(label)
        body.append(text(33, y, f"{label}  {note}" if note else label))
    for tick in ticks(y_top):
        y = bottom - tick * sy
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" '
                    f'stroke="{TEXT}" stroke-opacity="0.25" stroke-width="1"/>')
        body.append(text(left - 6, y + 4, f"{tick:,g}", 11, anchor="end"))
    for tick in ticks(x_top):
        x = left + tick * sx
        body.append(text(x, bottom + 16, f"{tick:g}", 11, anchor="middle"))
    body.append(text(left + plot_w / 2, bottom + 34, x_label, 12, anchor="middle"))
    body.append(text(16, top_pad - 6, unit, 11))
    body.append(f'<line x1="{left}" y1="{bottom}" x2="{width - right}" y2="{bottom}" '
                f'stroke="{TEXT}" stroke-width="1"/>')
    for i, values in enumerate(series.values()):
        path = " ".join(f"{left + x * sx:.1f},{bottom - y * sy:.1f}" for x, y in values)
        body.append(f'<polyline points="{path}" fill="none" '
                    f'stroke="{PALETTE[i % len(PALETTE)]}" stroke-width="1.5"/>')
    return svg(width, height + 10, body)


def svg(width: float, height: float, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
            f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img">\n'
            + "\n".join(body) + "\n</svg>\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="A peers.py OUT.json.")
    parser.add_argument("--out", required=True,
                        help="Prefix: writes OUT-throughput.svg and OUT-latency.svg.")
    args = parser.parse_args()
    report = json.loads(Path(args.results).read_text())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix, draw in (("throughput", throughput_svg), ("latency", latency_svg)):
        path = out.with_name(f"{out.name}-{suffix}.svg")
        path.write_text(draw(report))
        written.append(str(path))
    print("wrote " + ", ".join(written))


if __name__ == "__main__":
    main()
