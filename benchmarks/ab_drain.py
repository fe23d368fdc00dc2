"""Compare two pgjobs source trees on the same drain, alternating, medians of N rounds.

    git archive <commit> pgjobs migrations | tar -x -C /tmp/before
    PGJOBS_DATABASE_URL=... .venv/bin/python benchmarks/ab_drain.py /tmp/before . \\
        --rounds 5 --jobs 5000 --kind async

The same tree twice, with flags for the second run only, compares a setting instead:
``ab_drain.py . . --after-flags="--metrics --tracing"`` is the cost of metrics and
tracing.

Each round runs each tree's own benchmarks/profile_drain.py (this one's when the tree has
none) once per tree, order alternating, and reads its jobs/s and worker CPU microseconds
per job, and the server's CPU per job when it runs on this machine. CPU per job is the
steadier figure on a shared machine: it does not depend on how long the other side
takes to answer.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LINE = re.compile(r"= ([\d,]+) jobs/s; worker CPU \d+% of one core, (\d+) us/job"
                  r"(?:; server CPU (\d+) us/job)?")


def run(tree: str, args: argparse.Namespace, extra: list[str]
        ) -> tuple[float, float, float]:
    env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve())}
    own = Path(tree) / "benchmarks" / "profile_drain.py"
    script = own if own.is_file() else HERE / "profile_drain.py"
    out = subprocess.run(
        [sys.executable, str(script), "--jobs", str(args.jobs),
         "--kind", args.kind, "--concurrency", str(args.concurrency), *extra],
        env=env, check=True, capture_output=True, text=True,
    ).stdout
    match = LINE.search(out)
    if match is None:
        raise RuntimeError(f"unexpected output from {tree}: {out}")
    return float(match[1].replace(",", "")), float(match[2]), float(match[3] or "nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--kind", default="async")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--flags", default="",
                        help="More profile_drain.py flags for both trees' runs (--batch).")
    parser.add_argument("--after-flags", default="",
                        help="More profile_drain.py flags for the second tree's runs.")
    args = parser.parse_args()
    flags = {"before": args.flags.split(), "after": [*args.flags.split(),
                                                      *args.after_flags.split()]}
    results: dict[str, list[tuple[float, float, float]]] = {"before": [], "after": []}
    for r in range(args.rounds):
        order = [("before", args.before), ("after", args.after)]
        for name, tree in order if r % 2 == 0 else reversed(order):
            rate, cpu, server = run(tree, args, flags[name])
            results[name].append((rate, cpu, server))
            print(f"round {r + 1} {name:<6} {rate:>9,.0f} jobs/s {cpu:>6.0f} us/job "
                  f"worker, {server:>6.0f} us/job server", file=sys.stderr)
    for name, values in results.items():
        rate = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        server = statistics.median(v[2] for v in values)
        print(f"{name:<6} median {rate:>9,.0f} jobs/s {cpu:>6.0f} us/job worker CPU "
              f"{server:>6.0f} us/job server CPU "
              f"({args.kind}, concurrency {args.concurrency}, {args.jobs} jobs)")


if __name__ == "__main__":
    main()
