"""The newsletter demo that `make demo` runs: the system of newsletter.py under a deploy
and a crash, then a count of every message.

1. Starts (or reuses) the local PostgreSQL of `pgjobs dev start` and makes a fresh
   database ``newsletter_demo`` in it (``--dsn`` uses a database you give instead).
2. Migrates: `pgjobs migrate`, then the example's own tables (schema.sql).
3. Seeds the subscribers and the newsletters, due a few seconds apart.
4. Runs `pgjobs worker --processes 2`: the periodic import (every 2 s here) turns each
   due newsletter into a batch of delivery jobs.
5. Prints each newsletter's progress from its batch's counters, once a second. On the
   way it sends the supervisor SIGHUP (a rolling restart: a deploy) and then SIGKILLs
   one of the worker processes while it runs deliveries (a crash; the supervisor starts
   another, and the jobs come back when their 5-second lease runs out).
6. Prints the verification: recipients, deliveries, duplicates, missing, in the
   deliveries table and in the mail sink, and the time it took. Exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

import newsletter

HERE = Path(__file__).resolve().parent
DATABASE = "newsletter_demo"
LEASE = 5  # seconds: how long the jobs of the killed process wait before they run again


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--newsletters", type=int, default=1)
    parser.add_argument("--dsn", help="an empty database to use instead of the local server's "
                                      f"{DATABASE!r} (recreated on every run)")
    parser.add_argument("--concurrency", type=int, default=16, help="jobs at once per process")
    parser.add_argument("--send-latency", type=float, default=0.0,
                        help="seconds the mail sink takes per message")
    # 10,000 deliveries took 23 s on a shared 2-core machine with other work beside it
    # (docs/tutorial-newsletter.md, "How fast"); the timeout leaves room for a loaded one.
    parser.add_argument("--timeout", type=float, default=240.0,
                        help="seconds the workers get to send everything")
    return parser.parse_args()


def pgjobs_command(*args: str, env: dict[str, str] | None = None) -> str:
    """Run the `pgjobs` command line of this Python environment; return its output."""
    done = subprocess.run([sys.executable, "-m", "pgjobs", *args], env=env, check=True,
                          capture_output=True, text=True)
    return done.stdout.strip()


def create_database() -> str:
    """A fresh newsletter_demo database on the server of `pgjobs dev start`."""
    server = pgjobs_command("dev", "start").splitlines()[-1]
    with psycopg.connect(server, autocommit=True) as conn:
        name = sql.Identifier(DATABASE)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
    return make_conninfo(server, dbname=DATABASE)


def seed(dsn: str, subscribers: int, newsletters: int) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO subscribers (email) SELECT format('reader%%s@example.com', n) "
                     "FROM generate_series(1, %s) n", (subscribers,))
        for n in range(1, newsletters + 1):
            conn.execute(
                "INSERT INTO newsletters (subject, body, send_at) "
                "VALUES (%s, %s, now() + %s * interval '3 seconds')",
                (f"Issue #{n}", f"Hello, this is newsletter number {n}.", n - 1),
            )


# -- the workers --------------------------------------------------------------------------


@dataclass
class Workers:
    """`pgjobs worker --processes 2` and what the demo did to it."""

    supervisor: subprocess.Popen[bytes]
    dsn: str
    log: Path
    events: list[str] = field(default_factory=list)
    before_restart: set[int] = field(default_factory=set)
    restarted: bool = False
    killed: int | None = None
    killed_running: int = 0
    survivors: set[int] = field(default_factory=set)
    replacement: int | None = None

    @classmethod
    def start(cls, dsn: str, args: argparse.Namespace, log: Path) -> Workers:
        env = {**os.environ, "PGJOBS_DATABASE_URL": dsn,
               "NEWSLETTER_IMPORT_CRON": "* * * * * */2",  # every 2 s, for the demo
               "NEWSLETTER_SEND_LATENCY": str(args.send_latency)}
        command = [sys.executable, "-m", "pgjobs", "worker", "--app", "newsletter:app",
                   "--processes", "2", "--concurrency", str(args.concurrency),
                   "--lease", str(LEASE), "--shutdown-timeout", "8",
                   "--poll-interval", "0.5", "--log-level", "WARNING"]
        with log.open("wb") as out:
            supervisor = subprocess.Popen(command, cwd=HERE, env=env, stdout=out,
                                          stderr=subprocess.STDOUT)
        return cls(supervisor, dsn, log)

    def running(self) -> dict[int, int]:
        """Running worker processes: pid -> jobs it is running now."""
        return dict(query(self.dsn, """
            SELECT w.pid, count(j.id) FROM pgjobs.workers w
            LEFT JOIN pgjobs.jobs j ON j.worker_id = w.id AND j.state = 'running'
            WHERE w.state = 'running' GROUP BY w.pid"""))

    def step(self, done: float) -> None:
        """The deploy at 10% of the deliveries, the crash at 40% once the deploy is over."""
        running = self.running()
        if not self.before_restart and done >= 0.1 and len(running) == 2:
            self.before_restart = set(running)
            self.supervisor.send_signal(signal.SIGHUP)
            self.events.append(f"rolling restart: SIGHUP to the supervisor (workers "
                               f"{pids(running)})")
        elif self.before_restart and not self.restarted:
            if len(running) == 2 and not set(running) & self.before_restart:
                self.restarted = True
                self.events.append(f"rolling restart done: workers {pids(running)} replaced "
                                   f"{pids(self.before_restart)}")
        elif self.restarted and self.killed is None and done >= 0.4:
            victim, jobs = max(running.items(), key=lambda item: item[1])
            if jobs and parent_of(victim) == self.supervisor.pid:
                os.kill(victim, signal.SIGKILL)
                self.killed, self.killed_running = victim, jobs
                self.survivors = set(running) - {victim}
                self.events.append(f"SIGKILL to worker {victim} while it ran {jobs} jobs")
        elif self.killed is not None and self.replacement is None:
            new = set(running) - self.survivors - {self.killed}
            if new:
                self.replacement = min(new)
                self.events.append(f"the supervisor started worker {self.replacement} in "
                                   f"place of {self.killed}")

    def stop(self) -> None:
        if self.supervisor.poll() is None:
            self.supervisor.send_signal(signal.SIGTERM)
            try:
                self.supervisor.wait(30)
            except subprocess.TimeoutExpired:
                self.supervisor.kill()


def parent_of(pid: int) -> int | None:
    """The parent of a process (Linux /proc): the demo kills only its own workers."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def pids(values: Any) -> str:
    return ", ".join(str(pid) for pid in sorted(values))


def query(dsn: str, text: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(text, params).fetchall()


# -- progress -----------------------------------------------------------------------------

PROGRESS = """
SELECT n.id, n.status, n.recipients, b.total, b.succeeded, b.pending, b.failed, b.dead,
       greatest(0, extract(epoch FROM n.send_at - now()))
FROM newsletters n LEFT JOIN pgjobs.batch_progress b ON b.id = n.batch_id
ORDER BY n.id
"""


def progress_lines(rows: list[tuple[Any, ...]]) -> list[str]:
    lines = []
    for id_, status, _, total, succeeded, pending, failed, dead, due_in in rows:
        if total is None:
            lines.append(f"newsletter {id_}  {status:<9}  due in {due_in:.0f} s")
        else:
            lines.append(f"newsletter {id_}  {status:<9}  {succeeded:>7,} / {total:,} delivered"
                         f"   pending {pending:,}  failed {failed:,}  dead {dead:,}")
    return lines


class Screen:
    """Progress lines: redrawn in place on a terminal, printed one block a second in a
    log (no terminal control codes when stdout is not a tty)."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.drawn = 0

    def show(self, elapsed: float, events: list[str], lines: list[str]) -> None:
        if self.tty and self.drawn:
            sys.stdout.write(f"\x1b[{self.drawn}F")  # back to the first line of the block
        clear = "\x1b[K" if self.tty else ""
        for event in events:
            print(f"{elapsed:6.1f}s  >> {event}{clear}")
        for line in lines:
            print(f"{elapsed:6.1f}s  {line}{clear}")
        self.drawn = len(lines)
        sys.stdout.flush()


def run(dsn: str, workers: Workers, expected: int, timeout: float) -> float:
    """Show progress until every newsletter is sent (or flagged); the seconds it took."""
    screen, started, shown = Screen(), time.monotonic(), 0
    while True:
        time.sleep(1.0)
        elapsed = time.monotonic() - started
        rows = query(dsn, PROGRESS)
        workers.step(sum(row[4] or 0 for row in rows) / expected)
        screen.show(elapsed, workers.events[shown:], progress_lines(rows))
        shown = len(workers.events)
        if all(row[1] in ("sent", "needs_attention") for row in rows):
            return elapsed
        if elapsed > timeout or workers.supervisor.poll() is not None:
            return elapsed


# -- verification -------------------------------------------------------------------------

VERIFY = """
SELECT n.id, n.status, n.recipients,
       (SELECT count(*) FROM deliveries d WHERE d.newsletter_id = n.id),
       (SELECT count(*) - count(DISTINCT subscriber_id) FROM deliveries d
        WHERE d.newsletter_id = n.id),
       (SELECT count(*) FROM subscribers s WHERE NOT EXISTS (
            SELECT FROM deliveries d WHERE d.newsletter_id = n.id AND d.subscriber_id = s.id)),
       (SELECT count(*) FROM mailsink.messages m WHERE m.tag = n.id::text),
       (SELECT count(*) - count(DISTINCT recipient) FROM mailsink.messages m
        WHERE m.tag = n.id::text),
       (SELECT coalesce(sum(sends - 1), 0) FROM mailsink.messages m WHERE m.tag = n.id::text),
       (SELECT count(*) FROM pgjobs.jobs j WHERE j.batch_id = n.batch_id AND j.recoveries > 0)
FROM newsletters n ORDER BY n.id
"""
THROUGHPUT = """
SELECT count(*), extract(epoch FROM max(d.delivered_at) - (
    SELECT min(started_at) FROM newsletters)) FROM deliveries d
"""


@dataclass
class Verdict:
    failures: list[str] = field(default_factory=list)

    def check(self, ok: bool, what: str) -> None:
        print(f"  {'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            self.failures.append(what)


def verify(dsn: str, subscribers: int, workers: Workers, elapsed: float,
           timeout: float) -> list[str]:
    rows = query(dsn, VERIFY)
    total, seconds = query(dsn, THROUGHPUT)[0]
    header = ("newsletter", "status", "recipients", "deliveries", "duplicates", "missing",
              "sink msgs", "sink dups", "resends kept out", "jobs recovered")
    table = [["-" if value is None else value for value in row] for row in rows]
    widths = [max(len(str(cell)) for cell in column)
              for column in zip(header, *table, strict=True)]
    print()
    for cells in [header, *table]:
        print("  ".join(f"{cell:<{width}}" if isinstance(cell, str) and cell != "-"
                        else f"{cell:>{width}}" for cell, width in zip(cells, widths, strict=True)))
    rate = f"{total / float(seconds):,.0f} deliveries/s" if total and seconds else "n/a"
    print(f"\n{total:,} deliveries in {elapsed:.1f} s from the workers' start; "
          f"{rate} from the first import to the last delivery")
    print("(resends kept out: sends the sink refused to deliver twice, as their idempotency "
          "key was already in it)\n")

    verdict = Verdict()
    verdict.check(elapsed <= timeout, f"finished within {timeout:.0f} s")
    verdict.check(all(row[1] == "sent" for row in rows),
                  "every newsletter is 'sent' (its batch's on_success ran)")
    verdict.check(all(row[2] == subscribers for row in rows),
                  f"every newsletter was imported for all {subscribers:,} subscribers")
    verdict.check(all(row[3] == subscribers for row in rows),
                  "deliveries = recipients for every newsletter")
    verdict.check(all(row[4] == 0 for row in rows), "no duplicate in deliveries")
    verdict.check(all(row[5] == 0 for row in rows), "no subscriber missing")
    verdict.check(all(row[6] == subscribers and row[7] == 0 for row in rows),
                  "the sink holds one message per recipient, no duplicate")
    verdict.check(workers.restarted, "the rolling restart replaced both worker processes")
    verdict.check(workers.killed is not None and workers.killed_running > 0,
                  "a worker was SIGKILLed while it ran deliveries")
    verdict.check(workers.replacement is not None,
                  "the supervisor replaced the killed worker")
    return verdict.failures


def main() -> int:
    args = parse_args()
    dsn = args.dsn or create_database()
    env = {**os.environ, "PGJOBS_DATABASE_URL": dsn}
    print(pgjobs_command("migrate", env=env))
    with psycopg.connect(dsn) as conn:
        newsletter.migrate(conn)
    seed(dsn, args.subscribers, args.newsletters)
    print(f"{args.subscribers:,} subscribers, {args.newsletters} newsletter(s) due 3 s apart; "
          f"pgjobs worker --processes 2 --concurrency {args.concurrency} --lease {LEASE}")
    print(f"Watch it in the dashboard (another terminal, pip install 'pgjobs[dashboard]'):\n"
          f"  pgjobs --dsn '{dsn}' dashboard --no-auth   # then open http://127.0.0.1:8080/\n")

    if args.dsn:
        log = Path(tempfile.mkstemp(prefix="newsletter-demo-", suffix=".log")[1])
    else:
        log = Path(".pgjobs", "newsletter-demo-workers.log")
    workers = Workers.start(dsn, args, log)
    try:
        elapsed = run(dsn, workers, args.subscribers * args.newsletters, args.timeout)
    finally:
        workers.stop()
    failures = verify(dsn, args.subscribers, workers, elapsed, args.timeout)
    if failures:
        print(f"\ndemo FAILED: {len(failures)} check(s) did not hold; the workers' log is "
              f"{log}", file=sys.stderr)
        return 1
    if args.dsn:  # the log went to a temporary file: kept only when a check failed
        log.unlink()
        print(f"All checks hold. The rows stay in database {dsn!r}.")
    else:
        print(f"All checks hold. The rows stay in database {dsn!r}; the workers' log is {log}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
