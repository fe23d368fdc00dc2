"""pgjobs next to the ceiling (a minimal queue), pgqueuer and procrastinate: same
scenarios, one server, alternating.

    .venv/bin/python benchmarks/peers.py --rounds 5 --out docs/benchmarks-peers
    .venv/bin/python benchmarks/peers.py --dsn postgresql://... --rounds 5 --out results

Installs each peer (pinned) into its own virtual environment under benchmarks/.venvs/
on first use, creates a scratch database on the server (``--dsn``, PGJOBS_PEERS_DSN, or
else a throwaway embedded PostgreSQL 18 with default durability), installs every
system's schema there, then for each round runs every scenario once per system, in an
order that rotates each round. Every measurement is a fresh process (peer_runner.py)
under that system's interpreter. Writes OUT.md (medians and pgjobs/peer ratios) and
OUT.json (every run); drops the scratch database at the end.

Drains run twice per system: in its default configuration (1 and 2 worker processes,
concurrency 10) and in its best documented one (``BEST``, the ``drain_best`` row). The
minimal queue (``minimal`` in peer_runner.py) is the hardware's ceiling: claim K rows
with SKIP LOCKED, delete them when done. ``benchmarks/charts.py OUT.json`` draws SVG
charts of a run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

HERE = Path(__file__).resolve().parent
VENVS = HERE / ".venvs"
PEERS = {
    "pgqueuer": ["pgqueuer==1.6.0", "asyncpg", "uvloop", "psycopg[binary]"],
    "procrastinate": ["procrastinate==3.10.0", "psycopg[binary]", "psycopg-pool"],
}
SYSTEMS = ("minimal", "pgjobs", *PEERS)
# The best documented drain configuration of each system: (worker processes, concurrency).
# minimal: claims of 100 on one connection per process. pgjobs: 100 slots, so claims of
# up to 100 (plus claim-ahead). pgqueuer: its benchmark tool's batch of 50 and 5 queue
# managers per process (fixed in peer_runner.py; concurrency is unused). procrastinate:
# the docs' advice is more concurrency for I/O-bound jobs; 50 per process.
BEST = {"minimal": (2, 100), "pgjobs": (2, 100), "pgqueuer": (2, 10),
        "procrastinate": (2, 50)}


def python_for(system: str) -> str:
    if system in ("pgjobs", "minimal"):
        return sys.executable
    return str(VENVS / system / "bin" / "python")


def ensure_venv(system: str) -> None:
    """Create benchmarks/.venvs/SYSTEM with the pinned packages (once)."""
    venv = VENVS / system
    stamp = venv / ".installed"
    wanted = " ".join(PEERS[system])
    if stamp.exists() and stamp.read_text() == wanted:
        return
    say(f"installing {wanted} into {venv} ...")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", *PEERS[system]],
                   check=True)
    stamp.write_text(wanted)


def version_of(system: str) -> str:
    if system == "minimal":
        return "ceiling"
    name = "pgjobs" if system == "pgjobs" else system
    code = f"import importlib.metadata as m; print(m.version({name!r}))"
    out = subprocess.run([python_for(system), "-c", code], capture_output=True, text=True)
    return out.stdout.strip() or "?"


def url_for(base: str, dbname: str) -> str:
    """``base`` pointed at ``dbname``, as a URL (asyncpg takes URLs only)."""
    parts = {k: str(v) for k, v in conninfo_to_dict(base).items() if v is not None}
    parts.pop("dbname", None)
    auth = quote(parts.pop("user", ""), safe="")
    if "password" in parts:
        auth += ":" + quote(parts.pop("password"), safe="")
    host = parts.pop("host", "localhost")
    port = parts.pop("port", "5432")
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in parts.items())
    return f"postgresql://{auth}{'@' if auth else ''}{host}:{port}/{dbname}" + (
        f"?{query}" if query else "")


def say(text: str, end: str = "\n") -> None:
    print(text, end=end, file=sys.stderr, flush=True)


def measure(system: str, scenario: str, dsn: str, **sizes: Any) -> dict[str, Any]:
    args = [python_for(system), str(HERE / "peer_runner.py"), system, scenario, "--dsn", dsn]
    for key, value in sizes.items():
        args += [f"--{key}", str(value)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{system} {scenario} failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def scenarios(args: argparse.Namespace) -> list[tuple[str, str, dict[str, Any]]]:
    """(result name, runner scenario, sizes) in run order."""
    drain = {"n": args.drain, "concurrency": args.concurrency}
    return [
        ("enqueue_single", "enqueue_single", {"n": args.single}),
        ("enqueue_bulk", "enqueue_bulk", {"n": args.bulk, "batch": args.batch}),
        ("drain_p1", "drain", {**drain, "processes": 1}),
        (f"drain_p{args.processes}", "drain", {**drain, "processes": args.processes}),
        ("drain_best", "drain", {"n": args.drain, "best": True}),
        ("latency", "latency", {"rate": args.rate, "seconds": args.seconds,
                                "concurrency": args.concurrency}),
    ]


LABELS = {
    "enqueue_single": ("enqueue, one job per transaction", "jobs/s", True),
    "enqueue_bulk": ("bulk enqueue", "jobs/s", True),
    "drain_p1": ("drain, 1 worker process", "jobs/s", True),
    "drain_best": ("drain, best configuration", "jobs/s", True),
    "latency_p50": ("enqueue-commit -> handler start, p50", "ms", False),
    "latency_p90": ("enqueue-commit -> handler start, p90", "ms", False),
    "latency_p99": ("enqueue-commit -> handler start, p99", "ms", False),
}


def markdown(report: dict[str, Any]) -> str:
    systems = report["systems"]
    peers = [s for s in systems if s != "pgjobs"]
    head = ["scenario", "unit", *systems, *(f"pgjobs / {p}" for p in peers)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, per_system in report["medians"].items():
        label, unit, higher = LABELS.get(
            name, (f"drain, {name.removeprefix('drain_p')} worker processes", "jobs/s", True))
        cells = [label, unit + ("" if higher else " (lower is better)")]
        cells += [f"{per_system[s]:,.1f}" if s in per_system else "-" for s in systems]
        for peer in peers:
            ours, theirs = per_system.get("pgjobs"), per_system.get(peer)
            paired = report["paired"].get(name, {}).get(peer)
            cells.append(f"{ours / theirs:.2f} ({paired:.2f})" if ours and theirs and paired
                         else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("PGJOBS_PEERS_DSN"),
                        help="Server to use (default: a throwaway embedded PostgreSQL).")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--scenarios", default="enqueue_single,enqueue_bulk,drain,latency")
    parser.add_argument("--single", type=int, default=2000)
    parser.add_argument("--bulk", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1000,
                        help="Rows per bulk enqueue call.")
    parser.add_argument("--drain", type=int, default=20_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--out", default=str(HERE / "results" / "peers"),
                        help="Write OUT.md and OUT.json.")
    args = parser.parse_args()
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    for system in systems:
        if system not in SYSTEMS:
            raise SystemExit(f"unknown system {system!r}; choose from {', '.join(SYSTEMS)}")
        if system in PEERS:
            ensure_venv(system)

    # SIGTERM (a timeout, pkill) ends the run through the cleanup below, like Ctrl-C,
    # instead of leaving the throwaway server running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    server = None
    base = args.dsn
    if not base:
        from pgjobs.ops.devserver import LocalServer

        folder = Path(tempfile.mkdtemp(prefix="pgjobs-peers-"))
        server = LocalServer(folder / "data")
        say("starting a throwaway PostgreSQL (default durability) ...")
        base = server.start()
    scratch = f"pgjobs_peers_{uuid.uuid4().hex[:8]}"
    errors: list[str] = []
    try:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
            settings = {name: str(conn.execute(sql.SQL("SHOW {}").format(
                sql.Identifier(name))).fetchone()[0])  # type: ignore[index]
                for name in ("server_version", "synchronous_commit", "fsync",
                             "full_page_writes", "shared_buffers")}
        dsn = url_for(base, scratch)
        for system in systems:
            measure(system, "setup", dsn)
        runs = run_rounds(args, systems, dsn, errors)
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(scratch)))
        if server is not None:
            server.destroy()
            shutil.rmtree(server.datadir.parent, ignore_errors=True)
    medians = {name: {s: statistics.median(v) for s, v in per.items()}
               for name, per in runs.items()}
    # pgjobs / peer per round, then the median: steadier when load drifts between rounds
    paired = {name: {s: statistics.median(a / b for a, b in zip(
                         per["pgjobs"], v, strict=False) if b)
                     for s, v in per.items() if s != "pgjobs" and "pgjobs" in per and any(v)}
              for name, per in runs.items()}
    report = {
        "systems": systems,
        "versions": {s: version_of(s) for s in systems},
        "server": settings,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "args": vars(args),
        "medians": medians,
        "paired": paired,
        "runs": runs,
        "errors": errors,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = markdown(report)
    header = (f"PostgreSQL {settings['server_version']} (synchronous_commit="
              f"{settings['synchronous_commit']}, fsync={settings['fsync']}), "
              f"{os.cpu_count()} CPUs, medians of {args.rounds} rounds; versions: "
              + ", ".join(f"{s} {v}" for s, v in report["versions"].items())
              + ". Ratios: of the medians (in brackets: the median of each round's own "
              "ratio).\n\n")
    footer = ("\nBest configurations (processes x concurrency): " + ", ".join(
        f"{s} {BEST[s][0]}x{BEST[s][1]}" for s in systems) + ". minimal claims "
        "`--concurrency` rows at a time; pgqueuer uses batches of 50.\n")
    table += footer
    out.with_suffix(".md").write_text(header + table)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    print(header + table)


def run_rounds(args: argparse.Namespace, systems: list[str], dsn: str, errors: list[str]
               ) -> dict[str, dict[str, list[float]]]:
    runs: dict[str, dict[str, list[float]]] = {}
    for r in range(args.rounds):
        order = systems[r % len(systems):] + systems[: r % len(systems)]
        chosen = args.scenarios.split(",")
        for name, scenario, sizes in scenarios(args):
            if scenario not in chosen:
                continue
            for system in order:
                say(f"[round {r + 1}/{args.rounds}] {name:<15} {system:<14}", end="")
                started = time.perf_counter()
                chosen_sizes = dict(sizes)
                if chosen_sizes.pop("best", False):
                    chosen_sizes["processes"], chosen_sizes["concurrency"] = BEST[system]
                try:
                    result = measure(system, scenario, dsn, **chosen_sizes)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    # One system's failure must not lose the others' figures: record it.
                    say(f"FAILED: {str(exc).strip().splitlines()[-1][:200]}")
                    errors.append(f"round {r + 1} {name} {system}: {exc}")
                    continue
                if scenario == "latency":
                    for p in ("p50", "p90", "p99"):
                        runs.setdefault(f"latency_{p}", {}).setdefault(system, []).append(
                            result[p])
                    say(f"p50 {result['p50']:7.2f} ms  p99 {result['p99']:7.2f} ms")
                else:
                    runs.setdefault(name, {}).setdefault(system, []).append(result["value"])
                    say(f"{result['value']:>11,.1f} jobs/s "
                        f"({time.perf_counter() - started:.0f} s)")
    return runs


if __name__ == "__main__":
    main()
