"""The newsletter example (examples/newsletter) at a small size: the same demo script as
`make demo`, with its rolling restart and SIGKILL, and the same checks; then the
database is read again here, apart from the demo's own verification."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import query, scalar

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("supervisor")]

DEMO = Path(__file__).resolve().parents[1] / "examples" / "newsletter" / "demo.py"
SUBSCRIBERS = 300


def run_demo(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(DEMO), "--dsn", dsn, *args],
                          capture_output=True, text=True, timeout=180)


def test_every_subscriber_gets_each_newsletter_once_through_a_deploy_and_a_crash(
    fresh_dsn: str,
) -> None:
    # A sink that takes 0.2 s per message and 2 x 4 slots: about 40 deliveries a second,
    # so the 600 of them outlast the rolling restart and the SIGKILL comes mid-run.
    demo = run_demo(fresh_dsn, "--subscribers", str(SUBSCRIBERS), "--newsletters", "2",
                    "--concurrency", "4", "--send-latency", "0.2", "--timeout", "100")
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "\x1b" not in demo.stdout  # not a terminal: no control codes in the log
    assert ">> rolling restart done" in demo.stdout and ">> SIGKILL to worker" in demo.stdout

    assert query(fresh_dsn, "SELECT status, recipients FROM newsletters ORDER BY id") == [
        ("sent", SUBSCRIBERS), ("sent", SUBSCRIBERS)]
    assert query(fresh_dsn, """
        SELECT count(*), count(DISTINCT (newsletter_id, subscriber_id)), count(DISTINCT job_id)
        FROM deliveries""") == [(2 * SUBSCRIBERS, 2 * SUBSCRIBERS, 2 * SUBSCRIBERS)]
    assert query(fresh_dsn, "SELECT count(*), count(DISTINCT (tag, recipient)) "
                            "FROM mailsink.messages") == [(2 * SUBSCRIBERS, 2 * SUBSCRIBERS)]
    # The killed worker's deliveries ran again elsewhere (recovered by lease), and the
    # sends they repeated reached the sink under the same key, which kept them single.
    assert scalar(fresh_dsn, "SELECT count(*) FROM pgjobs.jobs "
                             "WHERE task = 'newsletter.deliver' AND recoveries > 0") > 0
    assert query(fresh_dsn, "SELECT state, count(*) FROM pgjobs.jobs "
                            "WHERE task = 'newsletter.deliver' GROUP BY state") == [
        ("succeeded", 2 * SUBSCRIBERS)]
    assert query(fresh_dsn, "SELECT state FROM pgjobs.batches ORDER BY id") == [
        ("succeeded",), ("succeeded",)]


def test_a_failed_check_prints_the_table_and_exits_1(fresh_dsn: str) -> None:
    # No run finishes within 0 s: the workers are stopped after the first progress line.
    demo = run_demo(fresh_dsn, "--subscribers", "20", "--timeout", "0")
    assert demo.returncode == 1, demo.stdout + demo.stderr
    assert "recipients  deliveries  duplicates  missing" in demo.stdout
    assert "FAIL finished within 0 s" in demo.stdout
    assert "demo FAILED" in demo.stderr
    log = Path(demo.stderr.rsplit("the workers' log is ", 1)[1].strip())
    assert log.is_file()  # kept for the reader, when a check failed
    log.unlink()
