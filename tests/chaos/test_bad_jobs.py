"""Jobs a worker cannot run: args it cannot decode or call with, task names it does not
know (including importable ones), queues nobody serves.

RELIABILITY.md row: "args that fail to decode, unknown task name, a queue no worker
serves": bad args are a recorded failure with a clear error; a task the worker does not
know goes back unspent for a worker that knows it (a mixed deploy, revision 0012), and
dies only after ``--unknown-task-grace`` with no live worker knowing it; never an import
from a name in the database, the worker keeps running, no other worker's jobs discarded.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psycopg
import pytest

from tests.chaos.harness import Fleet, all_succeeded, assert_exactly_once, scale
from tests.helpers import query, scalar, wait_until
from tests.workerapps import chaos

pytestmark = [pytest.mark.chaos, pytest.mark.xdist_group("chaos")]

TRIPWIRE = """
from pathlib import Path
Path({marker!r}).write_text("imported")

def boom(**kwargs):
    Path({marker!r}).write_text("called")
"""


def insert(dsn: str, task: str, args: str, queue: str = "default") -> int:
    """A row written by another producer (or by hand), not by pgjobs' enqueue."""
    return int(scalar(dsn, "INSERT INTO pgjobs.jobs (queue, task, args) "
                           "VALUES (%s, %s, %s::jsonb) RETURNING id", queue, task, args))


def errors(dsn: str, job_id: int) -> list[dict[str, str]]:
    return list(scalar(dsn, "SELECT errors FROM pgjobs.jobs WHERE id = %s", job_id))


@pytest.mark.timeout(scale(120, 300))
def handed_back(dsn: str, job_id: int) -> bool:
    """Claimed and handed back by a worker without its task: available again, no attempt
    spent, no error recorded, and a worker has tried it (it is due a little later)."""
    return query(dsn, "SELECT state, attempt, errors, run_at > created_at + interval '1 s' "
                      "FROM pgjobs.jobs WHERE id = %s", job_id) == [("available", 0, [], True)]


def test_jobs_a_worker_cannot_run_are_recorded_failures_and_the_worker_keeps_going(
    db: str, fleet: Fleet, tmp_path: Path
) -> None:
    marker = tmp_path / "tripwire-marker"
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "chaos_tripwire.py").write_text(TRIPWIRE.format(marker=str(marker)))
    n = scale(20, 200)
    with psycopg.connect(db) as conn:
        before = [j.id for j in chaos.effect.enqueue_many(conn, [{}] * n)]
    bad = {
        "too deep to decode": insert(db, "chaos.echo", '{"a": ' + "[" * 5000 + "]" * 5000 + "}"),
        "a number too long for int()": insert(db, "chaos.echo", '{"a": 1e5000}'),
        "args the handler does not take": insert(db, "chaos.strict", '{"nope": 1}'),
    }
    unknown = {
        "an importable task name": insert(db, "chaos_tripwire.boom", "{}"),
        "a shell command as task": insert(db, "os.system", '{"command": "touch /tmp/x"}'),
    }
    unserved = insert(db, "chaos.effect", "{}", queue="nobody")
    with psycopg.connect(db) as conn:
        after = [j.id for j in chaos.effect.enqueue_many(conn, [{}] * n)]
    worker = fleet.spawn("--concurrency", "4", "--poll-interval", "0.2",
                         env={"PYTHONPATH": os.pathsep.join([str(modules), str(Path.cwd()),
                                                             os.environ.get("PYTHONPATH", "")])})
    wait_until(lambda: all_succeeded(db, before + after), 60, "the good jobs to succeed")
    wait_until(lambda: all(errors(db, job_id) for job_id in bad.values()), 60,
               "every bad job to have a recorded failure")
    wait_until(lambda: all(handed_back(db, job_id) for job_id in unknown.values()), 60,
               "every job of an unknown task to be handed back")
    assert worker.alive(), worker.log()
    assert_exactly_once(db, before + after)
    expected = {
        "too deep to decode": ("pgjobs.InvalidArgs", "could not be decoded"),
        "a number too long for int()": ("pgjobs.InvalidArgs", "could not be decoded"),
        "args the handler does not take": ("TypeError", "nope"),
    }
    for label, job_id in bad.items():
        state, attempt = query(db, "SELECT state, attempt FROM pgjobs.jobs WHERE id = %s",
                               job_id)[0]
        assert (state, attempt) == ("available", 1), label  # retried later, not discarded
        (error,) = errors(db, job_id)
        kind, text = expected[label]
        assert error["type"] == kind and text in error["message"], (label, error)
    for label, job_id in unknown.items():
        assert f"job {job_id} " in worker.log(), label  # said at WARNING, not silently
    assert not marker.exists(), "a task name from the database was imported"
    assert query(db, "SELECT state, attempt, errors FROM pgjobs.jobs WHERE id = %s",
                 unserved) == [("available", 0, [])]


@pytest.mark.timeout(scale(120, 300))
def test_a_worker_without_the_task_does_not_discard_another_workers_jobs(
    db: str, fleet: Fleet
) -> None:
    """A worker of another app (an old deploy) serves the same queue and claims jobs of a
    task it does not have: it hands them back unspent, and a worker that has the task
    runs each of them once, on its first attempt."""
    with psycopg.connect(db) as conn:
        ids = [j.id for j in chaos.effect.options(queue="shared").enqueue_many(
            conn, [{}] * scale(4, 40))]
    stranger = fleet.spawn("--queues", "shared", "--poll-interval", "0.2",
                           app="workerapps.basic:app")
    wait_until(lambda: all(handed_back(db, i) for i in ids), 60,
               "the stranger to try every job")
    stranger.signal(signal.SIGTERM)
    assert stranger.wait(30) == 0
    fleet.spawn("--queues", "shared", "--poll-interval", "0.2")
    wait_until(lambda: all_succeeded(db, ids), 60, "the right worker to run them")
    assert_exactly_once(db, ids)
    assert query(db, "SELECT DISTINCT attempt, errors FROM pgjobs.jobs WHERE id = ANY(%s)",
                 ids) == [(1, [])]
