"""An hour of steady load: do tables, indexes, dead tuples and workers' memory stay flat?

    .venv/bin/python benchmarks/soak.py [--seconds 3600] [--rate 300] [--every 30]

A producer enqueues ``--rate`` jobs per second (10 per transaction), of which a share
fail their first attempt and succeed on the retry a second later (``--retry-share``) and
a share go in batches of 10 with an on_complete callback (``--batch-share``); a periodic
schedule enqueues a job every five seconds. ``pgjobs worker --processes 2`` runs them,
with every retention at ``--retention`` seconds, so that the pruner (once a minute)
deletes finished jobs and batches all through the run. Every ``--every`` seconds it
samples each pgjobs table's live and dead tuples and sizes (heap, indexes, total), the
backlog, the rates enqueued and finished, and the RSS of the supervisor and each worker
process; it writes them to OUT.json, draws OUT-sizes.svg, OUT-dead.svg, OUT-rss.svg and
OUT-rate.svg (benchmarks/charts.py), and prints, for each figure, the median and the
highest value of the first and of the last third of the samples after ``--warmup``, and
the least-squares slope per hour: "flat" is a number. ``--from-json OUT.json`` does that
again for a finished run (``--markdown``: the table for docs/operations.md).

Starts a throwaway PostgreSQL (the embedded wheel, default durability) unless ``--dsn``
names a database; migrates the schema ``pgjobs`` in it. Also the worker app
(``--app soak:app``, with benchmarks/ on the path).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from charts import lines_svg

import pgjobs

HERE = Path(__file__).resolve().parent
MB = 1024 * 1024

app = pgjobs.App()


@app.job(name="soak.work", retry_backoff=lambda attempt: 1.0)
async def work(fail: bool = False) -> None:
    if fail and pgjobs.current_job().attempt == 1:
        raise RuntimeError("soak: this job fails its first attempt")


@app.job(name="soak.batch_done")
async def batch_done(n: int) -> None:
    pass


@app.periodic("* * * * * */5", name="soak.tick")
@app.job(name="soak.tick")
async def tick() -> None:
    pass


TABLES = """
SELECT t.relname, t.n_live_tup, t.n_dead_tup, t.autovacuum_count,
       pg_relation_size(t.relid), pg_indexes_size(t.relid), pg_total_relation_size(t.relid)
FROM pg_stat_user_tables t
WHERE t.schemaname = 'pgjobs' AND t.relname <> 'alembic_version' ORDER BY t.relname
"""
INDEXES = """
SELECT i.indexrelname, pg_relation_size(i.indexrelid)
FROM pg_stat_user_indexes i WHERE i.schemaname = 'pgjobs' AND i.relname = 'jobs'
ORDER BY i.indexrelname
"""
# The jobs ever created (ids come from the sequence) less those not finished: what has
# finished, without counting rows that retention deletes.
QUEUE = """
SELECT (SELECT last_value FROM pgjobs.jobs_id_seq),
       count(*) FILTER (WHERE state = 'available' AND run_at <= now()),
       count(*) FILTER (WHERE state = 'available' AND run_at > now()),
       count(*) FILTER (WHERE state = 'running'),
       coalesce(extract(epoch FROM now() - min(run_at) FILTER (
           WHERE state = 'available' AND run_at <= now())), 0)
FROM pgjobs.jobs WHERE state IN ('available', 'running')
"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            lines = status.read_text().splitlines()
        except OSError:
            continue
        if any(line == f"PPid:\t{pid}" for line in lines):
            found.append(int(status.parent.name))
    return sorted(found)


def memory(supervisor: int) -> dict[str, float]:
    """RSS in MB of the supervisor and of each worker process (its children, by pid)."""
    out = {}
    for i, pid in enumerate([supervisor, *children(supervisor)]):
        with contextlib.suppress(OSError):
            out["supervisor" if i == 0 else f"worker {i}"] = round(rss_mb(pid), 1)
    return out


class Producer(threading.Thread):
    """``rate`` jobs a second, 10 per transaction: some fail once, some form a batch."""

    def __init__(self, dsn: str, args: argparse.Namespace) -> None:
        super().__init__(daemon=True)
        self.dsn, self.args = dsn, args
        self.enqueued = 0
        self.stop = threading.Event()

    def run(self) -> None:
        rng = random.Random(19)
        with psycopg.connect(self.dsn, prepare_threshold=0) as conn:
            next_at, n = time.perf_counter(), 0
            while not self.stop.is_set():
                rows = [{"fail": rng.random() < self.args.retry_share} for _ in range(10)]
                if rng.random() < self.args.batch_share:
                    batch = app.batch(conn, description="soak")
                    batch.on_complete(batch_done, n=n)
                    batch.enqueue_many(work, rows)
                else:
                    work.enqueue_many(conn, rows)
                conn.commit()
                self.enqueued += 10
                n += 1
                next_at += 10 / self.args.rate
                time.sleep(max(0.0, next_at - time.perf_counter()))


def sample(conn: psycopg.Connection[Any], started: float, producer: Producer,
           supervisor: int) -> dict[str, Any]:
    tables = {name: {"live": live, "dead": dead, "autovacuums": vac, "heap": heap,
                     "indexes": idx, "total": total}
              for name, live, dead, vac, heap, idx, total in conn.execute(TABLES).fetchall()}
    created, due, waiting, running, oldest = conn.execute(QUEUE).fetchone()  # type: ignore[misc]
    return {"t": round(time.perf_counter() - started, 1), "enqueued": producer.enqueued,
            "created": created, "unfinished": due + waiting + running, "due": due,
            "waiting": waiting, "running": running, "oldest_wait": float(oldest),
            "tables": tables, "jobs_indexes": dict(conn.execute(INDEXES).fetchall()),
            "rss": memory(supervisor)}


def rates(samples: list[dict[str, Any]]) -> None:
    """Per interval: jobs/s enqueued by the producer, and jobs/s finished (all kinds)."""
    for before, after in itertools.pairwise(samples):
        dt = after["t"] - before["t"]
        after["enqueued_rate"] = (after["enqueued"] - before["enqueued"]) / dt
        after["finished_rate"] = ((after["created"] - after["unfinished"])
                                  - (before["created"] - before["unfinished"])) / dt


def series(samples: list[dict[str, Any]]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """The figures of each chart: name -> [(minutes, value)]."""
    def pick(fn: Any) -> list[tuple[float, float]]:
        points = []
        for s in samples:
            with contextlib.suppress(KeyError):
                points.append((s["t"] / 60, float(fn(s))))
        return points

    others = [n for n in samples[-1]["tables"] if n != "jobs"] if samples else []
    sizes = {"jobs heap": pick(lambda s: s["tables"]["jobs"]["heap"] / MB),
             "jobs indexes": pick(lambda s: s["tables"]["jobs"]["indexes"] / MB)}
    sizes |= {f"{n} (total)": pick(lambda s, n=n: s["tables"][n]["total"] / MB)
              for n in others if samples[-1]["tables"][n]["total"] > 64 * 1024}
    dead = {n: pick(lambda s, n=n: s["tables"][n]["dead"])
            for n in ["jobs", *others] if max(
                (s["tables"].get(n, {}).get("dead", 0) for s in samples), default=0) > 0}
    rss = {name: pick(lambda s, name=name: s["rss"][name]) for name in samples[-1]["rss"]}
    rate = {"enqueued by the producer": pick(lambda s: s["enqueued_rate"]),
            "finished (all jobs)": pick(lambda s: s["finished_rate"]),
            "backlog (due, not running)": pick(lambda s: s["due"])}
    indexes = {n: pick(lambda s, n=n: s["jobs_indexes"][n] / MB)
               for n in samples[-1]["jobs_indexes"]} if samples else {}
    return {"sizes": sizes, "dead": dead, "rss": rss, "rate": rate, "indexes": indexes}


def summarise(points: list[tuple[float, float]], warmup: float) -> dict[str, float]:
    """Median and highest value of the first and the last third (after the warm-up), and
    the slope per hour."""
    kept = [p for p in points if p[0] * 60 >= warmup]
    if len(kept) < 3:
        kept = points
    third = max(1, len(kept) // 3)
    first, last = [y for _, y in kept[:third]], [y for _, y in kept[-third:]]
    xs, ys = [x / 60 for x, _ in kept], [y for _, y in kept]
    slope = statistics.linear_regression(xs, ys).slope if len(set(xs)) > 1 else 0.0
    return {"first": statistics.median(first), "last": statistics.median(last),
            "first_max": max(first), "last_max": max(last), "slope_per_hour": slope}


# Changes below these are flat whatever the ratio: a table of a few pages, a few hundred
# dead rows of a small table, a MB of RSS.
NOISE = {"sizes": 0.5, "indexes": 0.5, "dead": 1000, "rss": 1.0, "rate": 5.0}


def flat(chart: str, stats: dict[str, float], tolerance: float) -> bool:
    """The last third's median within ``tolerance`` of the first's, or within the noise.
    Dead tuples are a sawtooth (pruned once a minute, vacuumed soon after) that samples
    every 30 s catch at either end, so a third's median is either end's: their highest
    values are compared instead."""
    first, last = ((stats["first_max"], stats["last_max"]) if chart == "dead"
                   else (stats["first"], stats["last"]))
    change = abs(last - first)
    return change <= tolerance * max(abs(first), abs(last)) or change <= NOISE[chart]


def start_workers(dsn: str, args: argparse.Namespace, log: Any) -> subprocess.Popen[bytes]:
    retention = f"{args.retention:g}s"
    env = {**os.environ, "PGJOBS_DATABASE_URL": dsn,
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "pgjobs", "worker", "--app", "soak:app",
               "--processes", str(args.processes), "--concurrency", str(args.concurrency),
               "--retention-succeeded", retention, "--retention-cancelled", retention,
               "--retention-dead", retention, "--summary-interval", "60"]
    return subprocess.Popen(command, env=env, cwd=HERE, stdout=log, stderr=subprocess.STDOUT)


def run(dsn: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    from pgjobs.ops import migrate

    migrate.upgrade(dsn, "pgjobs")
    os.environ["PGJOBS_DATABASE_URL"] = dsn  # the app's, at its first use
    samples: list[dict[str, Any]] = []
    with open(args.worker_log, "ab") as log:
        workers = start_workers(dsn, args, log)
        producer = Producer(dsn, args)
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                while len(children(workers.pid)) < args.processes:
                    if workers.poll() is not None:
                        raise SystemExit(f"the workers exited; see {args.worker_log}")
                    time.sleep(0.2)
                started = time.perf_counter()
                producer.start()
                print(f"{'s':>6} {'enq/s':>6} {'fin/s':>6} {'due':>6} {'jobs MB':>8} "
                      f"{'idx MB':>7} {'dead':>8} {'all MB':>7}  RSS MB", flush=True)
                while True:
                    samples.append(sample(conn, started, producer, workers.pid))
                    rates(samples[-2:])
                    show(samples[-1])
                    if samples[-1]["t"] >= args.seconds:
                        break
                    time.sleep(max(0.0, started + len(samples) * args.every
                                   - time.perf_counter()))
        finally:
            producer.stop.set()
            workers.send_signal(signal.SIGTERM)
            workers.wait(60)
    return samples


def show(s: dict[str, Any]) -> None:
    jobs = s["tables"]["jobs"]
    total = sum(t["total"] for t in s["tables"].values())
    rss = " ".join(f"{v:.0f}" for v in s["rss"].values())
    print(f"{s['t']:>6.0f} {s.get('enqueued_rate', 0):>6.0f} {s.get('finished_rate', 0):>6.0f} "
          f"{s['due']:>6,} {jobs['heap'] / MB:>8.1f} {jobs['indexes'] / MB:>7.1f} "
          f"{jobs['dead']:>8,} {total / MB:>7.1f}  {rss}", flush=True)


CHARTS = {"sizes": ("Size of pgjobs' tables and indexes", "MB"),
          "dead": ("Dead row versions (pg_stat_user_tables.n_dead_tup)", "rows"),
          "rss": ("Resident memory (VmRSS) of each process", "MB"),
          "rate": ("Jobs per second, and the backlog", "jobs/s; backlog: jobs")}


def report(samples: list[dict[str, Any]], args: argparse.Namespace,
           machine: dict[str, Any] | None = None) -> dict[str, Any]:
    figures = series(samples)
    summary: dict[str, Any] = {}
    for chart, lines in figures.items():
        summary[chart] = {name: summarise(points, args.warmup)
                          for name, points in lines.items() if points}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for chart, (title, unit) in CHARTS.items():
        notes = {name: f"{fmt(s['first'])} \u2192 {fmt(s['last'])} "
                       f"(slope {fmt(s['slope_per_hour'])}/h)"
                 for name, s in summary[chart].items()}
        out.with_name(f"{out.name}-{chart}.svg").write_text(
            lines_svg(title, figures[chart], unit, notes=notes))
    machine = machine or {"cpus": os.cpu_count(), "load": os.getloadavg()}
    result = {"args": {k: v for k, v in vars(args).items()
                       if k not in ("dsn", "from_json", "markdown")}, "machine": machine,
              "summary": summary, "samples": samples}
    out.with_name(f"{out.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def fmt(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def print_summary(summary: dict[str, Any], args: argparse.Namespace) -> None:
    """The summary as a table, or with ``--markdown`` as a Markdown table (for the docs)."""
    units = {"sizes": "MB", "indexes": "MB", "dead": "rows", "rss": "MB", "rate": "jobs/s"}
    print(f"\nafter a warm-up of {args.warmup:g} s: median of the first and the last third, "
          f"least-squares slope per hour; flat: the last third within {args.tolerance:.0%} "
          "of the first (dead tuples: their highest values), or within the noise ("
          + ", ".join(f"{k} {v:g}" for k, v in NOISE.items()) + ")")
    if args.markdown:
        print("\n| figure | unit | first third | last third | slope per hour "
              "| highest, first / last third | |\n|---|---|---|---|---|---|---|")
    else:
        print(f"{'figure':<44} {'first':>10} {'last':>10} {'slope/h':>10} "
              f"{'highest':>21}")
    for chart, lines in summary.items():
        for name, s in lines.items():
            verdict = "flat" if flat(chart, s, args.tolerance) else (
                "GROWS" if s["last"] + s["last_max"] > s["first"] + s["first_max"]
                else "falls")
            unit = "jobs" if name.startswith("backlog") else units[chart]
            cells = [f"{chart}: {name}", unit, fmt(s["first"]), fmt(s["last"]),
                     fmt(s["slope_per_hour"]), f"{fmt(s['first_max'])} / {fmt(s['last_max'])}",
                     verdict]
            if args.markdown:
                print("| " + " | ".join(cells) + " |")
            else:
                print(f"{cells[0]:<44} {cells[2]:>10} {cells[3]:>10} {cells[4]:>10} "
                      f"{cells[5]:>21}  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="Database to use (default: a throwaway embedded server).")
    parser.add_argument("--seconds", type=float, default=3600)
    parser.add_argument("--rate", type=float, default=300)
    parser.add_argument("--every", type=float, default=30, help="Seconds between samples.")
    parser.add_argument("--warmup", type=float, default=300,
                        help="Seconds left out of the summary (tables fill to retention).")
    parser.add_argument("--retention", type=float, default=60,
                        help="Seconds finished jobs and complete batches are kept.")
    parser.add_argument("--retry-share", type=float, default=0.05)
    parser.add_argument("--batch-share", type=float, default=0.1,
                        help="Share of the transactions of 10 jobs that are a batch.")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--tolerance", type=float, default=0.1)
    parser.add_argument("--out", default=str(HERE.parent / "docs" / "soak"),
                        help="Write OUT.json and OUT-{sizes,dead,rss,rate}.svg.")
    parser.add_argument("--worker-log", default="soak-workers.log")
    parser.add_argument("--markdown", action="store_true",
                        help="Print the summary as a Markdown table.")
    parser.add_argument("--from-json", metavar="PATH",
                        help="Run nothing: summarise and draw the samples of an OUT.json.")
    args = parser.parse_args()
    if args.from_json:  # the run's own settings, but this summary's
        saved = json.loads(Path(args.from_json).read_text())
        summary_args = ("warmup", "tolerance", "out", "from_json", "markdown")
        args = argparse.Namespace(**{**saved["args"], **{
            k: v for k, v in vars(args).items() if k in summary_args}})
        result = report(saved["samples"], args, saved["machine"])
        print_summary(result["summary"], args)
        return
    args.worker_log = str(Path(args.worker_log).resolve())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    server = None
    dsn = args.dsn
    if not dsn:
        from pgjobs.ops.devserver import LocalServer

        server = LocalServer(Path(tempfile.mkdtemp(prefix="pgjobs-soak-")) / "data")
        print("starting a throwaway PostgreSQL (default durability) ...", flush=True)
        dsn = server.start()
    try:
        samples = run(dsn, args)
    finally:
        if server is not None:
            server.destroy()
            shutil.rmtree(server.datadir.parent, ignore_errors=True)
    result = report(samples, args)
    print_summary(result["summary"], args)


if __name__ == "__main__":
    main()
