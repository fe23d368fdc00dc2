"""Middleware around enqueue and execution, lifecycle events and probes, against a real
PostgreSQL with an in-process worker (``drain``). A middleware or listener that fails
must never lose a job or change its outcome."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
import pytest

import pgjobs
from pgjobs.testing import drain
from tests.helpers import query, scalar

tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="-")


def enqueue(dsn: str, task: pgjobs.Task[..., Any], **kwargs: Any) -> int:
    with psycopg.connect(dsn) as conn:
        return task.enqueue(conn, **kwargs).id


def state(dsn: str, job_id: int) -> tuple[Any, ...]:
    rows = query(dsn, "SELECT state, result, errors -> -1 ->> 'type', attempt FROM pgjobs.jobs "
                      "WHERE id = %s", job_id)
    return rows[0]


# -- execute middleware ------------------------------------------------------------------


def test_execute_middleware_wraps_handlers_in_order_where_they_run(
        fresh_app: pgjobs.App, fresh_dsn: str) -> None:
    app, seen = fresh_app, []

    @app.middleware("execute")
    def outer(call_next: Callable[[], Any], job: pgjobs.JobContext) -> Any:
        seen.append(("outer", job.task, threading.get_ident()))
        token = tenant.set(f"tenant-of-{job.id}")
        try:
            return call_next()
        finally:
            tenant.reset(token)

    @app.middleware("execute")
    def inner(call_next: Callable[[], Any], job: pgjobs.JobContext) -> Any:
        seen.append(("inner", job.task, threading.get_ident()))
        return call_next()

    @app.middleware("execute")
    async def around_async(call_next: Callable[[], Any], job: pgjobs.JobContext) -> Any:
        token = tenant.set("async-tenant")
        try:
            return {"wrapped": await call_next()}
        finally:
            tenant.reset(token)

    @app.job(name="sync_task")
    def sync_task() -> list[Any]:
        seen.append(("handler", "sync_task", threading.get_ident()))
        return [tenant.get()]

    @app.job(name="async_task")
    async def async_task() -> str:
        return tenant.get()

    sync_id, async_id = enqueue(fresh_dsn, sync_task), enqueue(fresh_dsn, async_task)
    assert drain(app) == {"succeeded": 2}
    # Sync middleware ran in the handler's own thread, first registered outermost; the
    # async one wrapped only the async handler. What a middleware returns is ignored:
    # the handler's own return value is the result.
    assert [s[0] for s in seen] == ["outer", "inner", "handler"]
    assert len({s[2] for s in seen}) == 1 and seen[0][2] != threading.get_ident()
    assert state(fresh_dsn, sync_id)[:2] == ("succeeded", [f"tenant-of-{sync_id}"])
    assert state(fresh_dsn, async_id)[:2] == ("succeeded", "async-tenant")


def misbehave(how: str, call_next: Callable[[], Any]) -> Any:
    """What a broken sync middleware does: raise before or after the call, swallow the
    handler's error, never call it, or call it twice."""
    if how == "raise_before":
        raise RuntimeError("middleware broke before")
    if how == "skip":
        return "skipped"
    if how == "twice":
        call_next()
        return call_next()
    try:
        call_next()
    except Exception:
        if how == "swallow":
            return "swallowed"
        raise
    raise RuntimeError("middleware broke after")


async def amisbehave(how: str, call_next: Callable[[], Any]) -> Any:
    if how == "raise_before":
        raise RuntimeError("middleware broke before")
    if how == "skip":
        return "skipped"
    if how == "twice":
        await call_next()
        return await call_next()
    try:
        await call_next()
    except Exception:
        if how == "swallow":
            return "swallowed"
        raise
    raise RuntimeError("middleware broke after")


@pytest.mark.parametrize("how", ["raise_before", "raise_after", "swallow", "skip", "twice"])
def test_a_failing_middleware_leaves_the_outcome_unchanged(
        fresh_app: pgjobs.App, fresh_dsn: str, how: str,
        caplog: pytest.LogCaptureFixture) -> None:
    app, runs = fresh_app, []
    app.middleware("execute")(lambda call_next, job: misbehave(how, call_next))

    async def broken(call_next: Callable[[], Any], job: pgjobs.JobContext) -> Any:
        return await amisbehave(how, call_next)

    app.middleware("execute")(broken)

    @app.job(name="ok")
    def ok() -> str:
        runs.append("ok")
        return "fine"

    @app.job(name="aok")
    async def aok() -> str:
        runs.append("aok")
        return "afine"

    @app.job(name="bad", max_attempts=1)
    def bad() -> None:
        runs.append("bad")
        raise ValueError("the handler's own error")

    @app.job(name="abad", max_attempts=2, retry_backoff=lambda attempt: 3600)
    async def abad() -> None:
        runs.append("abad")
        raise KeyError("the async handler's own error")

    ids = [enqueue(fresh_dsn, t) for t in (ok, aok, bad, abad)]
    caplog.set_level(logging.ERROR, "pgjobs.hooks")
    assert drain(app) == {"succeeded": 2, "dead": 1, "retry": 1}
    assert sorted(runs) == ["abad", "aok", "bad", "ok"]  # each exactly once
    assert [state(fresh_dsn, i)[:3] for i in ids] == [
        ("succeeded", "fine", None), ("succeeded", "afine", None),
        ("dead", None, "ValueError"), ("available", None, "KeyError")]
    if how != "twice":  # calling twice is not an error: the second call is the first's result
        assert "execute middleware" in caplog.text


def test_a_timeout_covers_async_middleware_and_handler(
        fresh_app: pgjobs.App, fresh_dsn: str) -> None:
    app = fresh_app

    @app.middleware("execute")
    async def passthrough(call_next: Callable[[], Any], job: pgjobs.JobContext) -> Any:
        return await call_next()

    @app.job(name="slow", timeout=0.2, max_attempts=1)
    async def slow() -> None:
        await asyncio.sleep(30)

    job_id = enqueue(fresh_dsn, slow)
    assert drain(app) == {"dead": 1}
    assert state(fresh_dsn, job_id)[2] == "pgjobs.JobTimeout"


# -- enqueue middleware ------------------------------------------------------------------


def test_enqueue_middleware_stores_meta_that_the_handler_reads(
        fresh_app: pgjobs.App, fresh_dsn: str) -> None:
    """The per-tenant example: the tenant travels in the job's meta."""
    app, calls = fresh_app, []

    @app.middleware("enqueue")
    def stamp(call_next: Callable[[], Any], call: pgjobs.EnqueueCall) -> Any:
        calls.append((call.task, call.queue, len(call.args)))
        call.meta["tenant"] = tenant.get()
        return call_next()

    @app.middleware("enqueue")
    async def astamp(call_next: Callable[[], Any], call: pgjobs.EnqueueCall) -> Any:
        call.meta["tenant"] = tenant.get()
        return await call_next()

    @app.middleware("execute")
    def restore(call_next: Callable[[], Any], job: pgjobs.JobContext) -> Any:
        token = tenant.set(job.meta.get("tenant", "none"))
        try:
            return call_next()
        finally:
            tenant.reset(token)

    @app.job(name="whose", queue="q1")
    def whose(n: int) -> str:
        return tenant.get()

    unique = whose.options(unique_for=timedelta(minutes=1))
    token = tenant.set("acme")
    try:
        with psycopg.connect(fresh_dsn) as conn:
            one = whose.enqueue(conn, n=0).id
            many = [r.id for r in whose.enqueue_many(conn, [{"n": i} for i in range(3)])]
            copied = [r.id for r in whose.enqueue_many(conn, [{"n": i} for i in range(600)])]
            special = unique.enqueue(conn, n=-1).id

        async def from_async() -> int:
            async with await psycopg.AsyncConnection.connect(fresh_dsn) as aconn:
                return (await whose.enqueue_async(aconn, n=7)).id

        async_id = asyncio.run(from_async())
    finally:
        tenant.reset(token)
    assert calls[:2] == [("whose", "q1", 1), ("whose", "q1", 3)]
    ids = [one, *many, copied[0], copied[-1], special, async_id]
    metas = query(fresh_dsn, "SELECT meta ->> 'tenant' FROM pgjobs.jobs WHERE id = ANY(%s)", ids)
    assert [m[0] for m in metas] == ["acme"] * len(ids)
    assert drain(app)["succeeded"] == 1 + 3 + 600 + 2
    results = query(fresh_dsn, "SELECT DISTINCT result FROM pgjobs.jobs")
    assert results == [("acme",)]


def test_a_failing_enqueue_middleware_still_enqueues(
        fresh_app: pgjobs.App, fresh_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    app = fresh_app

    @app.middleware("enqueue")
    def broken(call_next: Callable[[], Any], call: pgjobs.EnqueueCall) -> Any:
        raise RuntimeError("the middleware's bug")

    @app.job(name="t")
    def t() -> None: ...

    caplog.set_level(logging.ERROR, "pgjobs.hooks")
    job = t.enqueue(None)
    assert scalar(fresh_dsn, "SELECT state FROM pgjobs.jobs WHERE id = %s", job.id) == "available"
    assert "enqueue middleware raised" in caplog.text


def test_meta_that_is_not_json_is_refused_with_a_typed_error(
        fresh_app: pgjobs.App, conn: psycopg.Connection[Any]) -> None:
    @fresh_app.middleware("enqueue")
    def bad(call_next: Callable[[], Any], call: pgjobs.EnqueueCall) -> Any:
        call.meta["when"] = object()
        return call_next()

    @fresh_app.job(name="t")
    def t() -> None: ...

    with pytest.raises(pgjobs.InvalidOption, match="not JSON"):
        t.enqueue(conn)


# -- events ------------------------------------------------------------------------------


def test_events_follow_each_job_through_its_life(fresh_app: pgjobs.App, fresh_dsn: str) -> None:
    app, events = fresh_app, []
    app.on("enqueued", "started", "succeeded", "retried", "died", "cancelled", "snoozed")(
        events.append)

    @app.job(name="good")
    def good() -> int:
        return 1

    @app.job(name="flaky", max_attempts=2, retry_backoff=lambda attempt: 0)
    def flaky() -> None:
        raise ValueError(f"attempt {pgjobs.current_job().attempt}")

    @app.job(name="drop")
    async def drop() -> None:
        raise pgjobs.Cancel("no longer wanted")

    @app.job(name="later")
    async def later() -> None:
        raise pgjobs.Snooze(3600)

    ids = [enqueue(fresh_dsn, t) for t in (good, flaky, drop, later)]
    drain(app)
    by_job = {i: [e.kind for e in events if e.job_id == i] for i in ids}
    assert by_job == {
        ids[0]: ["enqueued", "started", "succeeded"],
        ids[1]: ["enqueued", "started", "retried", "started", "died"],
        ids[2]: ["enqueued", "started", "cancelled"],
        ids[3]: ["enqueued", "started", "snoozed"],
    }
    worker = scalar(fresh_dsn, "SELECT max(id) FROM pgjobs.workers")
    died = next(e for e in events if e.kind == "died")
    assert (died.task, died.queue, died.attempt, died.state, died.worker_id) == (
        "flaky", "default", 2, "dead", worker)
    assert died.error is not None and died.error["message"] == "attempt 2"
    assert died.duration is not None and died.duration > 0
    assert [e.state for e in events if e.job_id == ids[0]] == [
        "available", "running", "succeeded"]


def test_expired_and_reclaimed_jobs_are_reported(fresh_app: pgjobs.App, fresh_dsn: str) -> None:
    app, events = fresh_app, []
    app.on("expired", "reclaimed")(events.append)

    @app.job(name="t")
    def t() -> None: ...

    late, lost, doomed = (enqueue(fresh_dsn, t) for _ in range(3))
    with psycopg.connect(fresh_dsn, autocommit=True) as c:
        c.execute("UPDATE pgjobs.jobs SET expires_at = now() - interval '1 s', "
                  "meta = '{\"tenant\": \"acme\"}' WHERE id = %s", (late,))
        c.execute("UPDATE pgjobs.jobs SET state = 'running', attempt = 1, "
                  "lease_token = gen_random_uuid(), lease_expires_at = now() - interval '1 s', "
                  "recoveries = CASE WHEN id = %s THEN 3 ELSE 0 END WHERE id IN (%s, %s)",
                  (doomed, lost, doomed))
    drain(app)
    seen = sorted((e.kind, e.job_id, e.state, e.attempt) for e in events)
    assert seen == [("expired", late, "expired", 0), ("reclaimed", lost, "available", 0),
                    ("reclaimed", doomed, "dead", 0)]
    assert next(e for e in events if e.kind == "expired").meta == {"tenant": "acme"}


def test_a_listener_that_raises_is_logged_and_changes_nothing(
        fresh_app: pgjobs.App, fresh_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    app = fresh_app

    @app.on("started", "succeeded", "enqueued")
    def broken(event: pgjobs.JobEvent) -> None:
        raise RuntimeError(f"listener bug at {event.kind}")

    @app.job(name="t")
    def t() -> int:
        return 5

    caplog.set_level(logging.ERROR, "pgjobs.hooks")
    job_id = enqueue(fresh_dsn, t)
    assert drain(app) == {"succeeded": 1}
    assert state(fresh_dsn, job_id)[:2] == ("succeeded", 5)
    logged = [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert [str(e) for e in logged] == [f"listener bug at {k}" for k in
                                        ("enqueued", "started", "succeeded")]


def test_probes_measure_claims_and_slots(fresh_app: pgjobs.App, fresh_dsn: str) -> None:
    app = fresh_app

    class Recorder(pgjobs.Probe):
        def __init__(self) -> None:
            self.claimed_jobs, self.occupancy_seen = 0, set()

        def claimed(self, jobs: int, seconds: float) -> None:
            assert seconds > 0
            self.claimed_jobs += jobs

        def occupancy(self, running: int, free: int) -> None:
            self.occupancy_seen.add((running, free))

    probe = Recorder()
    app.hooks.probes.append(probe)

    @app.job(name="t")
    async def t() -> None:
        await asyncio.sleep(0.5)

    with psycopg.connect(fresh_dsn) as conn:
        t.enqueue_many(conn, [{}] * 5)
    drain(app, concurrency=3, lease=1)  # a heartbeat (sampling slots) every 1/3 s
    assert probe.claimed_jobs == 5
    assert {(0, 3), (3, 0)} <= probe.occupancy_seen  # at start; while three run
    assert all(running + free == 3 for running, free in probe.occupancy_seen)


def test_registration_is_checked(fresh_app: pgjobs.App) -> None:
    with pytest.raises(pgjobs.ConfigurationError, match="phase"):
        fresh_app.middleware("dequeue")(lambda call_next, job: call_next())  # type: ignore[arg-type]
    with pytest.raises(pgjobs.ConfigurationError, match="unknown event kind"):
        fresh_app.on("finished")(print)  # type: ignore[arg-type]

    async def listener(event: pgjobs.JobEvent) -> None: ...

    with pytest.raises(pgjobs.ConfigurationError, match="plain functions"):
        fresh_app.on("died")(listener)  # type: ignore[arg-type]
