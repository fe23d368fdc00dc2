"""Callers' connections may have any ``row_factory`` (``dict_row`` is common in
applications): every statement pgjobs runs on them reads its own rows as tuples."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import RowFactory, dict_row, namedtuple_row

import pgjobs
from pgjobs.testing import assert_enqueued, drain

FACTORIES = pytest.mark.parametrize("factory", [dict_row, namedtuple_row],
                                    ids=["dict_row", "namedtuple_row"])


@FACTORIES
def test_enqueue_batches_and_operator_calls_work_on_any_row_factory(
    fresh_app: pgjobs.App, fresh_dsn: str, factory: RowFactory[Any]
) -> None:
    @fresh_app.job(name="rf.work")
    def work(n: int) -> None: ...

    @fresh_app.job(name="rf.done")
    def done(tag: str) -> None: ...

    with psycopg.connect(fresh_dsn, row_factory=factory) as conn:
        one = work.enqueue(conn, n=1)
        many = work.enqueue_many(conn, [{"n": n} for n in range(2, 5)])
        big = work.enqueue_many(conn, [{"n": n} for n in range(5, 2005)])
        first = work.options(unique_for=timedelta(minutes=5)).enqueue(conn, n=0)
        again = work.options(unique_for=timedelta(minutes=5)).enqueue(conn, n=0)
        batch = fresh_app.batch(conn, description="rf")
        batch.on_success(done, tag="ok")
        in_batch = batch.enqueue_many(work, [{"n": 10}, {"n": 11}])
        assert batch.status().total == 2
        conn.commit()
        assert [e.id for e in many] == sorted(e.id for e in many)
        assert len({e.id for e in big}) == 2000
        assert again.duplicate and again.id == first.id
        assert assert_enqueued(conn, work, n=1) == [one.id]
        (cancelled,) = fresh_app.cancel_jobs(conn, [one.id], reason="rf")
        (retried,) = fresh_app.retry_jobs(conn, [one.id])
        conn.commit()
    assert cancelled.changed and retried.changed
    assert drain(fresh_app)["succeeded"] == 1 + 3 + 2000 + 1 + len(in_batch) + 1


@FACTORIES
def test_complete_in_the_handlers_transaction_works_on_any_row_factory(
    fresh_app: pgjobs.App, fresh_dsn: str, factory: RowFactory[Any]
) -> None:
    @fresh_app.job(name="rf.sync")
    def sync_handler() -> None:
        with psycopg.connect(fresh_dsn, row_factory=factory) as conn:
            pgjobs.current_job().complete(conn, result="sync")

    @fresh_app.job(name="rf.async")
    async def async_handler() -> None:
        async with await psycopg.AsyncConnection.connect(fresh_dsn, row_factory=factory) as aconn:
            await pgjobs.current_job().complete_async(aconn, result="async")

    with psycopg.connect(fresh_dsn) as conn:
        ids = [sync_handler.enqueue(conn).id, async_handler.enqueue(conn).id]
    assert drain(fresh_app)["succeeded"] == 2
    with psycopg.connect(fresh_dsn) as conn:
        rows = conn.execute("SELECT result FROM pgjobs.jobs WHERE id = ANY(%s) ORDER BY id",
                            (ids,)).fetchall()
    assert rows == [("sync",), ("async",)]


@FACTORIES
def test_async_enqueue_works_on_any_row_factory(
    fresh_app: pgjobs.App, fresh_dsn: str, factory: RowFactory[Any]
) -> None:
    task = fresh_app.task("rf.by_name")

    async def enqueue() -> list[pgjobs.Enqueued]:
        async with await psycopg.AsyncConnection.connect(fresh_dsn, row_factory=factory) as aconn:
            single = await task.enqueue_async(aconn, n=1)
            return [single, *await task.enqueue_many_async(aconn, [{"n": 2}, {"n": 3}])]

    jobs = asyncio.run(enqueue())
    assert [j.id for j in jobs] == sorted(j.id for j in jobs)
    with psycopg.connect(fresh_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pgjobs.jobs").fetchone() == (3,)
