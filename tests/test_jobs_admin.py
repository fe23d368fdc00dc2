"""Operator actions on jobs: App.cancel_jobs / App.retry_jobs and `pgjobs jobs ...`."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

import pgjobs
from pgjobs.ops.cli import cli
from pgjobs.testing import drain


def state(dsn: str, job_id: int) -> dict[str, Any]:
    with psycopg.connect(dsn, row_factory=psycopg.rows.dict_row) as conn:
        row = conn.execute("SELECT * FROM pgjobs.jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return row


def run(dsn: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--dsn", dsn, *args], prog_name="pgjobs",
                              env={"PGJOBS_SCHEMA": None})


@pytest.fixture
def tasks(fresh_app: pgjobs.App) -> dict[str, pgjobs.Task[..., Any]]:
    failures: dict[str, int] = {}

    @fresh_app.job(name="fails_until_fixed", max_attempts=2, retry_backoff=lambda a: 0.0)
    def fails_until_fixed(tag: str, times: int = 2) -> str:
        failures[tag] = failures.get(tag, 0) + 1
        if failures[tag] <= times:
            raise RuntimeError(f"broken {tag}")
        return "fixed"

    @fresh_app.job(name="noop")
    def noop(**kwargs: Any) -> None: ...

    @fresh_app.job(name="done")
    def done(**kwargs: Any) -> None: ...

    return {"fails": fails_until_fixed, "noop": noop, "done": done}


def test_cancel_waiting_jobs_and_say_why_not_for_the_others(
    fresh_app: pgjobs.App, fresh_dsn: str, tasks: dict[str, pgjobs.Task[..., Any]]
) -> None:
    waiting = tasks["noop"].enqueue(n=1).id
    later = tasks["noop"].options(run_in=timedelta(hours=1)).enqueue(n=2).id
    finished = tasks["noop"].enqueue(n=3).id
    with psycopg.connect(fresh_dsn) as conn:
        conn.execute("UPDATE pgjobs.jobs SET state = 'succeeded', finished_at = now() "
                     "WHERE id = %s", (finished,))
    changes = fresh_app.cancel_jobs(None, [later, waiting, finished, 999_999], "no longer")
    assert [(c.id, c.changed, c.was, c.state) for c in changes] == [
        (waiting, True, "available", "cancelled"),
        (later, True, "available", "cancelled"),
        (finished, False, "succeeded", "succeeded"),
        (999_999, False, None, None),
    ]
    assert changes[2].detail == "not cancelled: it has already finished (succeeded)"
    assert "no such job" in changes[3].detail
    row = state(fresh_dsn, waiting)
    assert row["meta"]["cancel_reason"] == "no longer" and row["finished_at"] is not None
    assert drain(fresh_app) == {}


def test_cancel_in_the_callers_transaction_rolls_back_with_it(
    fresh_app: pgjobs.App, fresh_dsn: str, tasks: dict[str, pgjobs.Task[..., Any]]
) -> None:
    job_id = tasks["noop"].enqueue().id
    with psycopg.connect(fresh_dsn) as conn:
        assert fresh_app.cancel_jobs(conn, [job_id])[0].changed
        conn.rollback()
    assert state(fresh_dsn, job_id)["state"] == "available"


def test_retry_a_dead_job_keeps_its_history_and_gives_it_one_more_attempt(
    fresh_app: pgjobs.App, fresh_dsn: str, tasks: dict[str, pgjobs.Task[..., Any]]
) -> None:
    job_id = tasks["fails"].enqueue(tag="a", times=3).id
    assert drain(fresh_app) == {"retry": 1, "dead": 1}
    [change] = fresh_app.retry_jobs(None, [job_id])
    assert (change.changed, change.was, change.state, change.detail) == (
        True, "dead", "available", "retried (was dead)")
    row = state(fresh_dsn, job_id)
    assert row["max_attempts"] == 3 and row["finished_at"] is None
    assert drain(fresh_app) == {"dead": 1}  # still broken: the one more attempt is spent
    assert fresh_app.retry_jobs(None, [job_id])[0].changed
    assert drain(fresh_app) == {"succeeded": 1}
    row = state(fresh_dsn, job_id)
    assert row["state"] == "succeeded" and row["attempt"] == 4 and row["result"] == "fixed"
    assert [e["message"] for e in row["errors"]] == ["broken a"] * 3


def test_retry_runs_a_job_waiting_for_its_retry_now_and_refuses_live_ones(
    fresh_app: pgjobs.App, fresh_dsn: str, tasks: dict[str, pgjobs.Task[..., Any]]
) -> None:
    waiting = tasks["noop"].options(run_in=timedelta(hours=1)).enqueue().id
    due = tasks["noop"].enqueue().id
    changes = fresh_app.retry_jobs(None, [waiting, due])
    assert [(c.changed, c.detail) for c in changes] == [
        (True, "runs now"), (False, "not retried: it is available")]
    assert drain(fresh_app) == {"succeeded": 2}
    assert fresh_app.retry_jobs(None, [due])[0].detail == "not retried: it is succeeded"


def test_a_retried_unique_job_takes_its_key_again_unless_another_job_holds_it(
    fresh_app: pgjobs.App, fresh_dsn: str, tasks: dict[str, pgjobs.Task[..., Any]]
) -> None:
    unique = tasks["noop"].options(unique_key="report")
    first = unique.enqueue().id
    fresh_app.cancel_jobs(None, [first])  # the hold ends with it
    second = unique.enqueue()
    assert not second.duplicate
    [refused] = fresh_app.retry_jobs(None, [first])
    assert not refused.changed
    assert refused.detail == f"not retried: job {second.id} holds its unique key"
    fresh_app.cancel_jobs(None, [second.id])
    assert fresh_app.retry_jobs(None, [first])[0].changed
    again = unique.options(on_duplicate="return").enqueue()
    assert again.duplicate and again.id == first  # the retried job holds the key


def test_retrying_a_dead_job_of_a_batch_lets_the_batch_succeed(
    fresh_app: pgjobs.App, fresh_dsn: str, tasks: dict[str, pgjobs.Task[..., Any]]
) -> None:
    with psycopg.connect(fresh_dsn) as conn:
        batch = fresh_app.batch(conn, description="retry me")
        batch.on_success(tasks["done"], event="success")
        batch.on_death(tasks["done"], event="death")
        [job] = batch.enqueue_many(tasks["fails"], [{"tag": "b"}])
        batch.enqueue_many(tasks["noop"], [{}])
    drain(fresh_app)
    status = fresh_app.batch_status(None, batch.id)
    assert (status.dead, status.succeeded) == (1, 1)
    assert fresh_app.retry_jobs(None, [job.id])[0].changed
    assert fresh_app.batch_status(None, batch.id).dead == 0
    drain(fresh_app)
    status = fresh_app.batch_status(None, batch.id)
    assert (status.state, status.dead, status.succeeded, status.pending) == (
        "succeeded", 0, 2, 0)
    with psycopg.connect(fresh_dsn) as conn:
        events = [r[0] for r in conn.execute(
            "SELECT args->>'event' FROM pgjobs.jobs WHERE task = 'done' ORDER BY id")]
    assert events == ["death", "success"]
    [refused] = fresh_app.retry_jobs(None, [job.id])
    assert refused.detail == "not retried: it is succeeded"


def test_a_cancelled_job_of_a_succeeded_batch_is_not_retried(
    fresh_app: pgjobs.App, fresh_dsn: str, tasks: dict[str, pgjobs.Task[..., Any]]
) -> None:
    with psycopg.connect(fresh_dsn) as conn:
        batch = fresh_app.batch(conn)
        [job] = batch.enqueue_many(tasks["noop"], [{}])
    fresh_app.cancel_jobs(None, [job.id])  # cancelled counts as succeeded: the batch succeeds
    assert fresh_app.batch_status(None, batch.id).state == "succeeded"
    [refused] = fresh_app.retry_jobs(None, [job.id])
    assert refused.detail == "not retried: its batch has succeeded and its callbacks have run"


def test_job_ids_are_checked(fresh_app: pgjobs.App) -> None:
    with pytest.raises(pgjobs.InvalidOption, match="at least one job id"):
        fresh_app.retry_jobs(None, [])
    with pytest.raises(pgjobs.InvalidOption, match="positive integers"):
        fresh_app.cancel_jobs(None, [0])


# -- pgjobs jobs ... ---------------------------------------------------------------------


def test_the_jobs_commands_list_show_retry_and_cancel(
    fresh_app: pgjobs.App, fresh_dsn: str, tasks: dict[str, pgjobs.Task[..., Any]]
) -> None:
    dead = tasks["fails"].enqueue(tag="c").id
    drain(fresh_app)
    waiting = tasks["noop"].options(queue="mail").enqueue(to="ada").id

    listed = run(fresh_dsn, "jobs", "list", "--state", "dead")
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert lines[0].split() == ["ID", "QUEUE", "TASK", "STATE", "ATTEMPT", "RUN", "AT",
                                "FINISHED", "LAST", "ERROR"]
    assert len(lines) == 2 and lines[1].split()[:5] == [
        str(dead), "default", "fails_until_fixed", "dead", "2/2"]
    assert lines[1].endswith("RuntimeError: broken c")
    as_json = json.loads(run(fresh_dsn, "jobs", "list", "--queue", "mail", "--json").output)
    assert [(j["id"], j["state"]) for j in as_json] == [(waiting, "available")]

    shown = run(fresh_dsn, "jobs", "show", str(dead))
    assert shown.exit_code == 0, shown.output
    assert "state" in shown.output and "dead" in shown.output
    assert shown.output.count("RuntimeError: broken c") == 4  # 2 messages, 2 tracebacks
    assert json.loads(run(fresh_dsn, "jobs", "show", str(waiting), "--json").output)[
        "args"] == {"to": "ada"}
    missing = run(fresh_dsn, "jobs", "show", "999999")
    assert missing.exit_code == 1 and "no job 999999" in missing.output

    retried = run(fresh_dsn, "jobs", "retry", str(dead), str(waiting))
    assert retried.exit_code == 1  # one of them could not be retried
    assert retried.output.splitlines() == [
        f"job {dead}: retried (was dead)", f"job {waiting}: not retried: it is available"]
    cancelled = run(fresh_dsn, "jobs", "cancel", str(waiting), "--reason", "typo")
    assert cancelled.exit_code == 0 and cancelled.output == f"job {waiting}: cancelled\n"
    assert state(fresh_dsn, waiting)["meta"] == {"cancel_reason": "typo"}
