"""Progress and checkpoints: ``current_job().progress()`` / ``.checkpoint()`` ride the lease
heartbeat of a real worker process (no round trip of their own), the last ones are written
with the job's outcome, a retried or recovered attempt gets ``last_checkpoint``, and both
show in SQL, ``App.result`` and ``pgjobs jobs show``."""

from __future__ import annotations

import datetime
import json
import math
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from click.testing import CliRunner

import pgjobs
from pgjobs.core.types import ClaimedJob
from pgjobs.db import leases
from pgjobs.ops.cli import cli
from pgjobs.worker.context import JobContext
from tests.helpers import harness_database, query, scalar, wait_until
from tests.workerapps import basic
from tests.workerapps.basic import HARNESS, app
from tests.workerprocs import Spawner, spawner

pytestmark = pytest.mark.xdist_group("worker")


@pytest.fixture
def dsn(fresh_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    yield from harness_database(fresh_dsn, monkeypatch, HARNESS, app)


@pytest.fixture
def spawn(dsn: str) -> Iterator[Spawner]:
    with spawner(dsn) as start:
        yield start


def reports(dsn: str, job_id: int) -> tuple[object, object]:
    row = query(dsn, "SELECT progress, checkpoint FROM pgjobs.jobs WHERE id = %s", job_id)
    return row[0][0], row[0][1]


def test_progress_rides_the_heartbeat_and_the_last_report_the_outcome(
    dsn: str, spawn: Spawner
) -> None:
    job_id = basic.reporting.enqueue().id
    spawn("--lease", "3")
    # running, and written by a heartbeat (the handler made no round trip to report)
    wait_until(lambda: reports(dsn, job_id) == (0.5, {"step": 1}), what="heartbeat's write")
    assert scalar(dsn, "SELECT state FROM pgjobs.jobs WHERE id = %s", job_id) == "running"
    shown = CliRunner().invoke(cli, ["jobs", "show", str(job_id)],
                               env={"PGJOBS_DATABASE_URL": dsn}, prog_name="pgjobs")
    assert shown.exit_code == 0, shown.output
    assert "progress" in shown.output and '{"step": 1}' in shown.output
    query(dsn, "INSERT INTO public.effects (job_id, pid) VALUES (%s, 0)", job_id)
    done = app.wait(job_id, timeout=60)
    # the final reports came with the outcome, though no heartbeat ran after them
    assert (done.state, done.progress, done.checkpoint) == (
        "succeeded", {"done": 2, "total": 2}, {"step": 2})
    assert done.result is None  # the first attempt had no checkpoint to start from


def test_a_suspect_in_a_process_of_its_own_reports_through_its_worker(
    dsn: str, spawn: Spawner
) -> None:
    """A recovered job runs alone in a child process (``worker.isolated``); what its
    handler reports reaches the worker through the pipe and rides the heartbeat."""
    job_id = basic.reporting.enqueue().id
    query(dsn, "UPDATE pgjobs.jobs SET recoveries = 1 WHERE id = %s", job_id)
    worker = spawn("--lease", "3")
    wait_until(lambda: reports(dsn, job_id) == (0.5, {"step": 1}), what="heartbeat's write")
    assert scalar(dsn, "SELECT state FROM pgjobs.jobs WHERE id = %s", job_id) == "running"
    query(dsn, "INSERT INTO public.effects (job_id, pid) VALUES (%s, 0)", job_id)
    done = app.wait(job_id, timeout=60)
    assert (done.state, done.progress, done.checkpoint) == (
        "succeeded", {"done": 2, "total": 2}, {"step": 2})
    assert "in a process of its own" not in worker.log()  # it did not crash


def test_a_retried_job_resumes_from_its_last_checkpoint(
    dsn: str, spawn: Spawner
) -> None:
    job_id = basic.resumable.enqueue().id
    spawn()
    done = app.wait(job_id, timeout=60)
    assert (done.state, done.attempt) == ("succeeded", 2)
    assert done.result == {"resumed_from": {"rows": 300}}
    assert done.errors[0]["message"] == "interrupted after 300 rows"


def test_a_recovered_job_resumes_from_the_checkpoint_its_lost_worker_wrote(
    dsn: str, spawn: Spawner
) -> None:
    job_id = basic.checkpoint_then_crash.enqueue().id
    first = spawn("--lease", "2")
    assert first.wait(60) == 77  # killed itself after the heartbeat wrote its checkpoint
    spawn("--lease", "2")
    done = app.wait(job_id, timeout=60)
    assert done.state == "succeeded"
    assert done.result == {"recovered_from": {"offset": 1234}, "recoveries": 1}


def test_reports_go_with_a_success_in_the_handlers_transaction(
    dsn: str, spawn: Spawner
) -> None:
    job_id = basic.reporting_tx.enqueue().id
    spawn()
    done = app.wait(job_id, timeout=60)
    assert (done.state, done.progress, done.checkpoint) == ("succeeded", 1.0, ["last"])


def context() -> JobContext:
    return JobContext(ClaimedJob(1, "t", "default", {}, 1, 1, None, 0, None, {},
                                checkpoint={"a": 1}),
                      app.queries)


def test_reports_are_checked_and_kept_until_written() -> None:
    ctx = context()
    assert ctx.last_checkpoint == {"a": 1}
    assert ctx.unwritten()[0] == (None, None)
    ctx.progress(0.25)
    ctx.checkpoint({"cursor": "abc"})
    (progress, checkpoint), versions = ctx.unwritten()
    assert (json.loads(progress or ""), json.loads(checkpoint or "")) == (0.25, {"cursor": "abc"})
    ctx.written(versions)
    assert ctx.unwritten()[0] == (None, None)
    ctx.progress({"done": 3, "total": 9})
    assert ctx.unwritten()[0] == ('{"done":3,"total":9}', None)
    for bad in (1.5, -0.1, math.nan, True, "half", [0.5]):
        with pytest.raises(pgjobs.InvalidArgs):
            ctx.progress(bad)  # type: ignore[arg-type]
    with pytest.raises(pgjobs.ArgsTooLarge):
        ctx.progress({"x": "y" * 5000})
    with pytest.raises(pgjobs.InvalidArgs):
        ctx.checkpoint({"when": object()})
    with pytest.raises(pgjobs.InvalidArgs):
        ctx.checkpoint("nul\x00")
    assert ctx.unwritten()[0] == ('{"done":3,"total":9}', None)  # refused: nothing changed


def test_reports_are_fenced_by_the_lease(dsn: str) -> None:
    """A heartbeat of an attempt that lost its lease writes none of its reports."""
    job_id = basic.noop.enqueue().id
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE pgjobs.jobs SET state = 'running', lease_token = gen_random_uuid(),"
                     " lease_expires_at = now() + interval '1 minute' WHERE id = %s", (job_id,))
        token = conn.execute("SELECT lease_token::text FROM pgjobs.jobs WHERE id = %s",
                             (job_id,)).fetchone()[0]  # type: ignore[index]
        stale = leases.heartbeat(app.queries, [job_id], [uuid.uuid4()],
                                 datetime.timedelta(seconds=30), None, [("0.9", '"stale"')])
        assert stale.run(conn) == {}
        fresh = leases.heartbeat(app.queries, [job_id], [token],
                                 datetime.timedelta(seconds=30), None, [("0.1", None)])
        assert fresh.run(conn) == {token: True}
    assert reports(dsn, job_id) == (0.1, None)
