"""Mixed deploys, with real worker processes: a worker of the old release hands a job of a
task it lacks back unrun (its attempt refunded) while a live worker knows the task or the
grace lasts, and a worker of the new release runs it; a job of a task no worker ever
knew dies after the grace, with an error that says what to deploy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pgjobs.worker.lifecycle import unknown_task_delay
from tests.helpers import harness_database, query, scalar, wait_until
from tests.workerapps import registry
from tests.workerprocs import Spawner, spawner, wait_for_running

pytestmark = pytest.mark.xdist_group("worker")

OLD = "workerapps.registry:old"
NEW = "workerapps.registry:app"


@pytest.fixture
def dsn(fresh_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    yield from harness_database(fresh_dsn, monkeypatch, registry.HARNESS, registry.app)


@pytest.fixture
def spawn(dsn: str) -> Iterator[Spawner]:
    with spawner(dsn) as start:
        yield start


def job_row(dsn: str, job_id: int) -> tuple[str, int, list[dict[str, object]]]:
    state, attempt, errors = query(dsn, "SELECT state, attempt, errors FROM pgjobs.jobs "
                                        "WHERE id = %s", job_id)[0]
    return state, attempt, errors


def test_an_old_worker_hands_the_job_back_for_a_new_one(dsn: str, spawn: Spawner) -> None:
    # A new worker that knows the task but serves another queue keeps it alive past the
    # old worker's grace: a live worker knows it.
    spawn("--queues", "other", app=NEW)
    old = spawn("--queues", "default", "--unknown-task-grace", "2s", app=OLD)
    wait_for_running(dsn, 2, "both workers")
    job_id = registry.app.task("registry.new_task").enqueue(n=1).id

    def handed_back() -> int:
        return old.log().count(f"job {job_id} ")

    wait_until(lambda: handed_back() >= 3 and scalar(
        dsn, "SELECT now() - created_at > interval '3 seconds' FROM pgjobs.jobs "
             "WHERE id = %s", job_id), 60, "the old worker to hand the job back past its grace")
    # (between two claims by the old worker: no attempt spent, no error recorded)
    wait_until(lambda: job_row(dsn, job_id) == ("available", 0, []), 30,
               "the job to be available with no attempt spent")
    why = dict(query(dsn, "SELECT cause, reason FROM pgjobs.why(%s)", job_id))
    assert "no live worker of queue 'default' knows its task 'registry.new_task'" in \
        why["unknown_task"]
    assert scalar(dsn, "SELECT count(*) FROM public.registry_runs") == 0

    new = spawn("--queues", "default", app=NEW)
    runs = wait_until(lambda: query(dsn, "SELECT job_id, attempt, pid FROM "
                                         "public.registry_runs"), 60, "the new worker")
    assert runs == [(job_id, 1, new.pid)]  # its first attempt: none was spent before
    wait_until(lambda: job_row(dsn, job_id)[0] == "succeeded", 30, "the job's success")
    assert job_row(dsn, job_id)[2] == []


def test_a_task_no_worker_ever_knew_dies_after_the_grace(dsn: str, spawn: Spawner) -> None:
    old = spawn("--queues", "default", "--unknown-task-grace", "1s", app=OLD)
    wait_for_running(dsn, 1, "the old worker")
    job_id = registry.app.task("registry.new_task").enqueue(n=2).id
    wait_until(lambda: job_row(dsn, job_id)[0] == "dead", 60, "the job to die")
    state, attempt, errors = job_row(dsn, job_id)
    assert (state, attempt, len(errors)) == ("dead", 0, 1)  # never run: no attempt spent
    error = errors[0]
    assert error["type"] == "pgjobs.UnknownTask"
    message = str(error["message"])
    assert "no live worker knows task 'registry.new_task': no worker has ever registered it" \
        in message
    assert "grace of 00:00:01" in message and "deploy a worker whose app registers" in message
    assert f"`pgjobs jobs retry {job_id}`" in message
    (why,) = query(dsn, "SELECT cause, reason FROM pgjobs.why(%s)", job_id)
    assert why[0] == "dead" and "registry.new_task" in why[1]
    assert "does not have registered" in old.log()


@pytest.mark.parametrize(("grace", "poll", "delay"), [
    (None, 1.0, 5.1),      # the default: 5 s, just past this worker's fifth poll
    (3600.0, 0.2, 5.02),
    (2.0, 1.0, 1.1),       # a quarter of the grace, but never before this worker's next poll
    (12.0, 1.0, 3.1),
    (2.0, 0.0, 0.5),       # no polling to align with
])
def test_a_handed_back_job_is_due_just_after_this_workers_own_poll(
        grace: float | None, poll: float, delay: float) -> None:
    assert unknown_task_delay(grace, poll) == pytest.approx(delay)
