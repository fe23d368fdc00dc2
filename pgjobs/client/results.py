"""Reading a job's result, and waiting for its end (``App.result``, ``App.wait``,
``Enqueued.wait``).

A wait LISTENs on the schema's done channel on a connection of its own, marks the job as
waited for (revision 0009's trigger sends the id of a marked job there when it reaches a
terminal state; unmarked jobs notify nobody, so the hot path pays nothing), then reads
the job: a job that ended before the mark is seen by that first read, a mark skipped
because the row was locked is tried again at each read, and a notification lost (a
dropped connection) is covered by a read every ``POLL`` seconds. Without a listen connection
(PgBouncer without ``listen_dsn``) it only polls. The sync and async waits share
everything but the few calls that block.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from ..core.errors import InvalidOption, JobNotFound, ResultTimeout
from ..core.types import JobResult
from ..db import jobs
from ..db.queries import Queries
from ..db.statement import Query

POLL = 1.0
"""Seconds between reads of the job while no notification arrives (the fallback)."""
APPLICATION_NAME = "pgjobs wait"
"""A waiting connection's name in ``pg_stat_activity``."""


def check_wait(job_id: object, timeout: object) -> None:
    if type(job_id) is not int or job_id < 1:
        raise InvalidOption(f"job ids are positive integers, not {job_id!r}")
    if timeout is not None and (not isinstance(timeout, int | float) or timeout < 0):
        raise InvalidOption(f"timeout must be a number of seconds >= 0 or None, not {timeout!r}")


class Wait:
    """One wait's deadline and the read it repeats."""

    def __init__(self, q: Queries, job_id: int, timeout: float | None) -> None:
        check_wait(job_id, timeout)
        self.job_id = job_id
        self.payload = str(job_id)
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.read: Query[JobResult | None] = jobs.result(q, job_id)
        self.watch: Query[bool] = jobs.watch(q, job_id)
        self.marked = False
        self.state = "unknown"

    def done(self, found: JobResult | None) -> JobResult | None:
        """``found`` when it is finished; raise when there is no such job."""
        if found is None:
            raise JobNotFound(self.job_id)
        self.state = found.state
        return found if found.finished else None

    def pause(self) -> float:
        """Seconds to wait for a notification before the next read; raise at the deadline."""
        if self.deadline is None:
            return POLL
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise ResultTimeout(self.job_id, float(self.timeout or 0), self.state)
        return min(POLL, left)

    def listen(self, channel: str) -> sql.Composed:
        return sql.SQL("LISTEN {}").format(sql.Identifier(channel))


def wait(q: Queries, dsn: str | None, fallback: ConnectionPool[Any] | None, job_id: int,
         timeout: float | None, channel: str) -> JobResult:
    """Block until job ``job_id`` ends. ``dsn``: where to LISTEN (None: poll on
    ``fallback``, a connection pool)."""
    waiting = Wait(q, job_id, timeout)
    if dsn is None:
        assert fallback is not None
        while True:
            with fallback.connection() as conn:
                if (found := waiting.done(waiting.read.run(conn))) is not None:
                    return found
            time.sleep(waiting.pause())
    with psycopg.connect(dsn, autocommit=True, application_name=APPLICATION_NAME) as conn:
        conn.execute(waiting.listen(channel))
        while True:
            waiting.marked = waiting.marked or bool(waiting.watch.run(conn))
            if (found := waiting.done(waiting.read.run(conn))) is not None:
                return found
            pause = waiting.pause()
            for note in conn.notifies(timeout=pause):
                if note.payload == waiting.payload:
                    break


async def wait_async(q: Queries, dsn: str | None,
                     fallback: AsyncConnectionPool[Any] | None, job_id: int,
                     timeout: float | None, channel: str) -> JobResult:
    """:func:`wait` on asyncio (``fallback``: an async connection pool)."""
    waiting = Wait(q, job_id, timeout)
    if dsn is None:
        assert fallback is not None
        while True:
            async with fallback.connection() as aconn:
                if (found := waiting.done(await waiting.read.arun(aconn))) is not None:
                    return found
            await asyncio.sleep(waiting.pause())
    async with await psycopg.AsyncConnection.connect(
            dsn, autocommit=True, application_name=APPLICATION_NAME) as aconn:
        await aconn.execute(waiting.listen(channel))
        while True:
            waiting.marked = waiting.marked or bool(await waiting.watch.arun(aconn))
            if (found := waiting.done(await waiting.read.arun(aconn))) is not None:
                return found
            pause = waiting.pause()
            async for note in aconn.notifies(timeout=pause):
                if note.payload == waiting.payload:
                    break
