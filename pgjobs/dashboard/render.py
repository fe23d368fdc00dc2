"""HTML out: the Jinja environment, the filters the templates use, and the charts.

Every value a template prints goes through ``visible`` before Jinja escapes it (the
environment's ``finalize``), so nothing read from the database can inject markup, and
none of it can hide or reorder text either: bidirectional controls (a right-to-left
override turns ``exe.txt`` into ``txt.exe``) and other invisible control characters are
shown as ``\\u202e``-style escapes. Autoescape is on for every template.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

TEMPLATES = Path(__file__).with_name("templates")

# C0 and C1 controls (but tab and newline), the bidirectional marks, embeddings, overrides
# and isolates, zero-width characters and the BOM.
_HIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e"
                     "\u2060-\u2064\u2066-\u2069\ufeff]")


def visible(value: Any) -> Any:
    """``value`` with every invisible or reordering character shown as an escape. Markup
    (a macro's output) is left alone: the values inside it went through here already."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return _HIDDEN.sub(lambda m: f"\\u{ord(m.group()):04x}", value)
    return value


def duration(value: timedelta | float | None) -> str:
    """A short human duration: 850ms, 12s, 4m 10s, 3h 5m, 2d 4h."""
    if value is None:
        return "-"
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    sign, seconds = ("-", -seconds) if seconds < 0 else ("", seconds)
    if seconds < 1:
        return f"{sign}{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{sign}{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{sign}{minutes}m {secs}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{sign}{hours}h {minutes}m"
    days, hours = divmod(hours, 24)
    return f"{sign}{days}d {hours}h"


def when(value: datetime | None) -> str:
    """A timestamp to the second, in UTC."""
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def pretty_json(value: Any) -> str:
    """Indented JSON of a value, or of JSON text (text that does not parse is kept)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return str(value)
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("bytes", "KB", "MB"):
        if n < 1024 or unit == "MB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n //= 1024
    raise AssertionError("unreachable")


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        finalize=visible,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(duration=duration, when=when, pretty_json=pretty_json, size=size)
    return env


def query_string(params: dict[str, Any]) -> str:
    """``?a=1&b=x`` of the params that are set (None and "" are left out)."""
    kept = {k: v for k, v in params.items() if v is not None and v != ""}
    return "?" + urlencode(kept) if kept else ""


# -- charts -------------------------------------------------------------------------------

MINUTES = 60
HEIGHT = 60


@dataclass(frozen=True, slots=True)
class Bar:
    x: int
    succeeded: int
    failed: int
    y_succeeded: float
    h_succeeded: float
    y_failed: float
    h_failed: float
    label: str


@dataclass(frozen=True, slots=True)
class Chart:
    """One hour of per-minute counts as stacked bars (drawn as SVG rects in the template:
    no script, no inline style, so the CSP holds)."""

    bars: list[Bar]
    peak: int
    succeeded: int
    failed: int
    width: int = MINUTES * 5
    height: int = HEIGHT


def chart(rows: list[dict[str, Any]]) -> Chart:
    """A chart from rows of (minutes_ago, succeeded, failed); oldest minute on the left."""
    per_minute = {int(r["minutes_ago"]): (int(r["succeeded"]), int(r["failed"])) for r in rows}
    peak = max((s + f for s, f in per_minute.values()), default=0)
    scale = (HEIGHT - 2) / peak if peak else 0.0
    bars = []
    for slot in range(MINUTES):
        ago = MINUTES - 1 - slot
        ok, failed = per_minute.get(ago, (0, 0))
        h_ok, h_failed = ok * scale, failed * scale
        bars.append(Bar(
            x=slot * 5, succeeded=ok, failed=failed,
            y_succeeded=HEIGHT - h_ok, h_succeeded=h_ok,
            y_failed=HEIGHT - h_ok - h_failed, h_failed=h_failed,
            label=f"{ago} min ago: {ok} succeeded, {failed} failed"))
    return Chart(bars, peak, sum(b.succeeded for b in bars), sum(b.failed for b in bars))
