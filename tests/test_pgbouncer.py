"""PgBouncer 1.18 in transaction pooling mode in front of PostgreSQL: enqueue, workers and
migrations work through it with App(pgbouncer=True) / `pgjobs worker --pgbouncer`; LISTEN
goes over a direct connection when one is given, and polling finds jobs otherwise."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import psycopg
import pytest

import pgjobs
from pgjobs.core.version import HEAD_REVISION as HEAD
from pgjobs.ops import migrate as _migrate
from tests.deploy import PgBouncer, enqueue_every_way
from tests.helpers import WorkerProcess, harness_database, scalar, wait_until
from tests.workerapps.deployed import HARNESS
from tests.workerapps.deployed import app as deployed_app

pytestmark = [pytest.mark.xdist_group("worker"), pytest.mark.slow]


@pytest.fixture(scope="module")
def bouncer() -> Iterator[PgBouncer]:
    server = PgBouncer(os.environ["PGJOBS_TEST_DSN"])
    server.start()
    yield server
    server.stop()


@pytest.fixture
def dsn(fresh_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    yield from harness_database(fresh_dsn, monkeypatch, HARNESS, deployed_app)


def run_worker(bouncer: PgBouncer, direct: str, *args: str) -> WorkerProcess:
    return WorkerProcess(bouncer.url_for(direct), "--pgbouncer", *args,
                         app="workerapps.deployed:app")


def stopped_log(worker: WorkerProcess) -> str:
    """Stop ``worker`` with SIGTERM; its log, once it exited cleanly."""
    worker.signal(signal.SIGTERM)
    code = worker.wait()
    log = worker.log()
    assert code == 0, log
    return log


def test_without_the_knob_prepared_statements_collide(bouncer: PgBouncer, dsn: str) -> None:
    # The failure App(pgbouncer=True) avoids: two clients preparing (psycopg's default
    # after 5 runs of a statement) on the server connections they share.
    single = PgBouncer(dsn, pool_size=1)
    single.start()
    try:
        through = single.url_for(dsn)
        with psycopg.connect(through, autocommit=True) as a, \
                psycopg.connect(through, autocommit=True) as b, \
                pytest.raises(psycopg.errors.DuplicatePreparedStatement):
            for _ in range(10):
                a.execute("SELECT 1")
                b.execute("SELECT 1")
    finally:
        single.stop()


def test_enqueue_every_way_through_pgbouncer(bouncer: PgBouncer, dsn: str) -> None:
    through = bouncer.url_for(dsn)
    app = pgjobs.App(dsn=through, pgbouncer=True)
    produced = enqueue_every_way(app, through)
    app.close()
    assert scalar(dsn, "SELECT count(*) FROM pgjobs.jobs WHERE id = ANY(%s)",
                  produced.ids) == len(produced.ids)
    assert "prepared statement" not in bouncer.log()


def test_a_worker_drains_through_pgbouncer_by_polling(bouncer: PgBouncer, dsn: str) -> None:
    app = pgjobs.App(dsn=bouncer.url_for(dsn), pgbouncer=True)
    produced = enqueue_every_way(app, bouncer.url_for(dsn))
    app.close()
    worker = run_worker(bouncer, dsn, "--poll-interval", "0.2", "--lease", "3")
    try:
        wait_until(lambda: scalar(dsn, "SELECT count(*) FROM pgjobs.jobs WHERE id = ANY(%s) "
                                  "AND state = 'succeeded'", produced.ids) == len(produced.ids),
                   what="every job to succeed")
        wait_until(lambda: scalar(dsn, "SELECT count(*) FROM public.runs "
                                  "WHERE task = 'on_batch_success'") == 1,
                   what="the batch's success callback")
        # Several heartbeats (every lease/3 = 1 s) and periodic ticks through the pooler.
        wait_until(lambda: scalar(dsn, "SELECT count(*) FROM public.runs "
                                  "WHERE task = 'tick'") >= 3, what="periodic ticks")
        log = stopped_log(worker)
    finally:
        worker.close()
    assert "no LISTEN" in log
    for bad in ("prepared statement", "connection failed"):
        assert bad not in log, log
    assert scalar(dsn, "SELECT count(*) FROM public.runs WHERE task = 'once_flaky' "
                  "AND attempt = 2") == 6
    assert scalar(dsn, "SELECT state FROM pgjobs.workers") == "stopped"


def test_a_listen_dsn_wakes_a_worker_behind_pgbouncer(bouncer: PgBouncer, dsn: str) -> None:
    # Polls only once a minute: a job done sooner was found through the notification.
    worker = run_worker(bouncer, dsn, "--poll-interval", "60", "--listen-dsn", dsn)
    try:
        wait_until(lambda: scalar(
            dsn, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'pgjobs-listen' AND query LIKE 'LISTEN%'"),
            what="the worker's LISTEN on the direct connection")
        wait_until(lambda: scalar(dsn, "SELECT count(*) FROM pgjobs.workers") == 1,
                   what="the worker to register")
        app = pgjobs.App(dsn=bouncer.url_for(dsn), pgbouncer=True)
        job = app.task("member").enqueue(n=1)
        app.close()
        wait_until(lambda: scalar(dsn, "SELECT state FROM pgjobs.jobs WHERE id = %s",
                                  job.id) == "succeeded",
                   timeout=30, what="the woken worker to run the job")
        log = stopped_log(worker)
    finally:
        worker.close()
    assert "no LISTEN" not in log


def test_migrate_through_pgbouncer(bouncer: PgBouncer, empty_dsn: str) -> None:
    # One transaction, a transaction-scoped advisory lock, nothing prepared: a pooler in
    # transaction mode is fine, also when run twice.
    _migrate.upgrade(bouncer.url_for(empty_dsn))
    _migrate.upgrade(bouncer.url_for(empty_dsn))
    with psycopg.connect(empty_dsn) as conn:
        assert _migrate.current_revision(conn, "pgjobs") == HEAD


def test_a_supervisor_hands_the_pgbouncer_settings_to_its_processes(
    bouncer: PgBouncer, dsn: str,
) -> None:
    worker = run_worker(bouncer, dsn, "--processes", "2", "--poll-interval", "0.2",
                        "--listen-dsn", dsn)
    try:
        wait_until(lambda: scalar(dsn, "SELECT count(*) FROM pgjobs.workers "
                                  "WHERE state = 'running'") == 2, what="two worker processes")
        app = pgjobs.App(dsn=bouncer.url_for(dsn), pgbouncer=True)
        ids = [app.task("member").enqueue(n=n).id for n in range(20)]
        app.close()
        wait_until(lambda: scalar(dsn, "SELECT count(*) FROM pgjobs.jobs WHERE id = ANY(%s) "
                                  "AND state = 'succeeded'", ids) == len(ids),
                   what="every job to succeed")
        # Each process LISTENs on the direct connection it was handed.
        assert scalar(dsn, "SELECT count(*) FROM pg_stat_activity "
                      "WHERE datname = current_database() "
                      "AND application_name = 'pgjobs-listen'") == 2
        log = stopped_log(worker)
    finally:
        worker.close()
    assert "prepared statement" not in log, log
