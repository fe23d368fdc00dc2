"""Prometheus metrics and JSON logs, scraped from real processes after known jobs ran:
`pgjobs worker --metrics-port` alone and with `--processes 2`, and `pgjobs exporter`.
Values are checked, not just names."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

import pgjobs
from pgjobs.observability import exporter
from tests.helpers import TESTS, WorkerProcess, query, scalar, wait_until
from tests.workerapps import basic
from tests.workerprocs import Spawner, running_pids, spawner, wait_for_running, with_harness

pytestmark = pytest.mark.xdist_group("metrics")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def scraped(port: int, expected: dict[tuple[str, frozenset[tuple[str, str]]], float],
            what: str) -> Samples:
    """Scrape until every expected sample has its value (the worker may still be starting,
    or just writing the last outcome)."""
    def check() -> Samples | None:
        try:
            samples = scrape(port)
        except OSError:
            return None
        return samples if all(samples.get(k) == v for k, v in expected.items()) else None

    try:
        return wait_until(check, 60, what)  # type: ignore[no-any-return]
    except AssertionError:
        samples = scrape(port)
        raise AssertionError({k: (samples.get(k), v) for k, v in expected.items()}) from None


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


@pytest.fixture
def spawn(fresh_dsn: str) -> Iterator[Spawner]:
    """Worker processes on a fresh database with the harness tables (``spawn.dsn``)."""
    with spawner(with_harness(fresh_dsn)) as start:
        yield start


def test_a_worker_serves_its_metrics_and_logs_json(spawn: Spawner) -> None:
    dsn = spawn.dsn
    with psycopg.connect(dsn) as conn:
        for x in range(3):
            basic.double.enqueue(conn, x=x)
        basic.fail.enqueue(conn)  # max_attempts 3, no backoff: retried twice, then dead
        basic.cancel_me.enqueue(conn, reason="no")
        lost = basic.noop.enqueue(conn).id
        # A job whose worker died: reclaimed by this worker's first maintenance pass.
        conn.execute("UPDATE pgjobs.jobs SET state = 'running', attempt = 1, lease_token = "
                     "gen_random_uuid(), lease_expires_at = now() - interval '1 s' "
                     "WHERE id = %s", (lost,))
    port = free_port()
    worker = spawn("--metrics-port", str(port), "--metrics-host", "127.0.0.1",
                   "--concurrency", "4", "--lease", "3", "--log-format", "json",
                   "--log-level", "DEBUG")
    samples = scraped(port, {
        key("pgjobs_jobs_finished_total", task="double", queue="default",
            outcome="succeeded"): 3,
        key("pgjobs_jobs_finished_total", task="fail", queue="default", outcome="retried"): 2,
        key("pgjobs_jobs_finished_total", task="fail", queue="default", outcome="died"): 1,
        key("pgjobs_jobs_finished_total", task="cancel_me", queue="default",
            outcome="cancelled"): 1,
        key("pgjobs_jobs_finished_total", task="noop", queue="default", outcome="succeeded"): 1,
        key("pgjobs_jobs_reclaimed_total", queue="default", state="available"): 1,
        key("pgjobs_job_duration_seconds_count", task="double"): 3,
        key("pgjobs_job_duration_seconds_count", task="fail"): 3,
        key("pgjobs_jobs_running"): 0,
        key("pgjobs_free_slots"): 4,
        key("pgjobs_lease_renewals_failed_total"): 0,
    }, "the known jobs' metrics")
    assert value(samples, "pgjobs_claim_duration_seconds_count")
    assert value(samples, "pgjobs_job_duration_seconds_bucket", task="double", le="+Inf") == 3

    # A lease lost under a running job: the heartbeat fails to renew it and stops it.
    with psycopg.connect(dsn) as conn:
        busy = basic.busy.enqueue(conn, seconds=30).id
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM public.attempts WHERE job_id = %s",
                              busy), 30, "the busy job to start")
    scraped(port, {key("pgjobs_jobs_running"): 1, key("pgjobs_free_slots"): 3}, "one running")
    query(dsn, "UPDATE pgjobs.jobs SET lease_token = gen_random_uuid(), lease_expires_at = "
               "now() + interval '1 hour' WHERE id = %s", busy)
    scraped(port, {key("pgjobs_lease_renewals_failed_total"): 1,
                   key("pgjobs_jobs_finished_total", task="busy", queue="default",
                       outcome="lease_lost"): 1,
                   key("pgjobs_jobs_running"): 0}, "the lost lease")

    worker.signal(signal.SIGTERM)
    assert worker.wait(60) == 0
    lines = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    assert len(lines) == len(worker.log().splitlines())  # every line is one JSON object
    died = next(line for line in lines if line.get("outcome") == "dead")
    worker_id = scalar(dsn, "SELECT max(id) FROM pgjobs.workers")
    assert died["level"] == "WARNING" and died["logger"] == "pgjobs.worker"
    assert {k: died[k] for k in ("task", "queue", "attempt", "worker_id")} == {
        "task": "fail", "queue": "default", "attempt": 3, "worker_id": worker_id}
    assert died["job_id"] > 0 and died["duration_ms"] >= 0
    assert sum(line.get("outcome") == "succeeded" for line in lines) == 4  # DEBUG lines


STALE = ("from prometheus_client import Counter; Counter('pgjobs_jobs_finished', '', "
         "['task', 'queue', 'outcome']).labels('async_busy', 'default', 'succeeded').inc(100)")


def test_one_scrape_covers_every_process_of_a_supervisor(spawn: Spawner, tmp_path: Path
                                                         ) -> None:
    dsn = spawn.dsn
    # A directory of a previous run, with a count the supervisor must not add in.
    folder = tmp_path / "metrics"
    folder.mkdir()
    subprocess.run([sys.executable, "-c", STALE], check=True,
                   env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)})
    assert list(folder.glob("counter_*.db"))
    port = free_port()
    supervisor = spawn("--processes", "2", "--concurrency", "3", "--metrics-port", str(port),
                       "--metrics-host", "127.0.0.1", "--poll-interval", "0.2",
                       env={"PROMETHEUS_MULTIPROC_DIR": str(folder)})
    first = wait_for_running(dsn, 2, "two worker processes")
    with psycopg.connect(dsn) as conn:
        basic.async_busy.enqueue_many(conn, [{"seconds": 0.2}] * 12)
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM pgjobs.jobs WHERE state = "
                                   "'succeeded'") == 12, 60, "the jobs")
    ran_in = {pid for (pid,) in query(dsn, "SELECT DISTINCT pid FROM public.attempts")}
    finished = key("pgjobs_jobs_finished_total", task="async_busy", queue="default",
                   outcome="succeeded")
    scraped(port, {finished: 12, key("pgjobs_free_slots"): 6, key("pgjobs_jobs_running"): 0,
                   key("pgjobs_job_duration_seconds_count", task="async_busy"): 12},
            "the sum of both processes")
    assert ran_in <= first

    # A child killed and replaced: its live gauges go (free slots stay 2 x 3), its
    # counters stay (the fleet's total never goes down).
    os.kill(min(first), signal.SIGKILL)
    wait_until(lambda: len(running_pids(dsn) - first) == 1, 60, "the replacement")
    scraped(port, {finished: 12, key("pgjobs_free_slots"): 6}, "the replacement's gauges")
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait(60) == 0
    assert folder.is_dir()  # named by the user: cleared at start, kept at exit


def test_the_exporter_serves_queue_wide_gauges(fresh_dsn: str) -> None:
    dsn = fresh_dsn
    app = pgjobs.App(dsn=dsn)
    mail = app.task("shop.mail", queue="mail")
    with psycopg.connect(dsn) as conn:
        mail.options(run_in=timedelta(hours=1)).enqueue(conn)  # scheduled: not due
        waited = mail.enqueue(conn).id
        mail.enqueue(conn)
        sms = app.task("shop.sms", queue="sms")
        dead = sms.enqueue(conn).id
        app.batch(conn, "pending").enqueue(sms)
        conn.execute("UPDATE pgjobs.jobs SET run_at = now() - interval '90 s' WHERE id = %s",
                     (waited,))
        conn.execute("UPDATE pgjobs.jobs SET state = 'dead', finished_at = now() "
                     "WHERE id = %s", (dead,))
        conn.execute("INSERT INTO pgjobs.workers (host, pid, queues, concurrency, meta) VALUES "
                     "('h', 1, '{mail}', 4, '{\"lease\": 30}'), "
                     "('h', 2, '{mail}', 4, '{\"lease\": 30}'), "
                     "('h', 3, '{mail}', 4, '{\"lease\": 30}')")
        # One killed long ago (silent past its lease) and one stopped: neither is alive.
        conn.execute("UPDATE pgjobs.workers SET heartbeat_at = now() - interval '5 min' "
                     "WHERE pid = 2")
        conn.execute("UPDATE pgjobs.workers SET state = 'stopped' WHERE pid = 3")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgjobs", "exporter", "--port", str(port), "--host",
         "127.0.0.1"], env={**os.environ, "PGJOBS_DATABASE_URL": dsn},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=str(TESTS))
    try:
        samples = scraped(port, {key("pgjobs_exporter_up"): 1}, "the exporter")
        assert {k: v for k, v in samples.items() if k[0] == "pgjobs_queue_jobs"} == {
            key("pgjobs_queue_jobs", queue="mail", state="available"): 3,
            key("pgjobs_queue_jobs", queue="sms", state="available"): 1,
            key("pgjobs_queue_jobs", queue="sms", state="dead"): 1,
        }
        assert 90 <= value(samples, "pgjobs_queue_oldest_available_age_seconds",
                           queue="mail") < 300  # type: ignore[operator]
        assert value(samples, "pgjobs_queue_oldest_available_age_seconds", queue="sms") < 60  # type: ignore[operator]
        assert value(samples, "pgjobs_queue_dead_jobs", queue="sms") == 1
        assert value(samples, "pgjobs_queue_dead_jobs", queue="mail") == 0
        assert value(samples, "pgjobs_workers_alive", state="running") == 1
        assert value(samples, "pgjobs_batches_pending") == 1
        # Computed at each scrape: a job that dies shows at the next one.
        query(dsn, "UPDATE pgjobs.jobs SET state = 'dead', finished_at = now() "
                   "WHERE id = %s", waited)
        scraped(port, {key("pgjobs_queue_dead_jobs", queue="mail"): 1}, "the next scrape")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        app.close()
    assert proc.returncode == 0, stderr
    assert b"serving schema 'pgjobs'" in stderr


def test_the_exporter_reports_a_database_it_cannot_read(empty_dsn: str) -> None:
    families = {f.name: f for f in exporter.QueueCollector(empty_dsn).collect()}
    assert families["pgjobs_exporter_up"].samples[0].value == 0
    assert families["pgjobs_queue_jobs"].samples == []


def test_a_bad_metrics_port_is_a_usage_error(fresh_dsn: str) -> None:
    dsn = fresh_dsn
    done = subprocess.run(
        [sys.executable, "-m", "pgjobs", "worker", "--app", "workerapps.basic:app",
         "--metrics-port", "70000"], env={**os.environ, "PGJOBS_DATABASE_URL": dsn},
        capture_output=True, text=True, cwd=str(TESTS), check=False)
    assert done.returncode == 2 and "--metrics-port" in done.stderr


def test_a_metrics_port_in_use_is_refused(spawn: Spawner) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker: WorkerProcess = spawn("--metrics-port", str(port), "--metrics-host",
                                      "127.0.0.1")
        assert worker.wait(60) == 1
    assert "cannot serve metrics on 127.0.0.1" in worker.log()

