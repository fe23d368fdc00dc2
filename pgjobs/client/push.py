"""Reliable push: an enqueue made without a connection commits in a short transaction of
the app's own pool, and is retried across connection failures without ever enqueueing
twice. A receipt committed with the jobs lets a retry after an unknown commit outcome
return the first try's jobs instead of enqueueing again (docs/reliable-push.md)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from ..core.types import Enqueued
from ..db import receipts
from ..db.connection import TRANSIENT
from ..db.enqueue import AnyStatement
from ..db.queries import Queries
from ..db.statement import Query

T = TypeVar("T")

log = logging.getLogger("pgjobs")


def push(pool: ConnectionPool[Any], q: Queries, statement: AnyStatement, retries: int,
         timeout: float) -> list[Enqueued]:
    """Run ``statement`` in its own transaction on ``pool``, retrying transient
    connection failures up to ``retries`` times."""
    key = uuid.uuid4()
    for attempt in range(retries + 1):
        try:
            with pool.connection(timeout=timeout) as conn:
                if attempt:
                    found = receipts.get(q, key).run(conn)
                    if found is not None:
                        return found
                results = statement.run(conn)
                receipts.put(q, key, results).run(conn)
            return results
        except psycopg.errors.UniqueViolation:
            if not attempt:
                raise
            # An earlier try committed while this one ran: the next finds its receipt.
            continue
        except (*TRANSIENT, PoolTimeout) as exc:
            time.sleep(_wait(attempt, retries, exc))
    raise AssertionError("unreachable")


async def apush(pool: AsyncConnectionPool[Any], q: Queries, statement: AnyStatement,
                retries: int, timeout: float) -> list[Enqueued]:
    """:func:`push` on an async pool."""
    key = uuid.uuid4()
    for attempt in range(retries + 1):
        try:
            async with pool.connection(timeout=timeout) as conn:
                if attempt:
                    found = await receipts.get(q, key).arun(conn)
                    if found is not None:
                        return found
                results = await statement.arun(conn)
                await receipts.put(q, key, results).arun(conn)
            return results
        except psycopg.errors.UniqueViolation:
            if not attempt:
                raise
            # An earlier try committed while this one ran: the next finds its receipt.
            continue
        except (*TRANSIENT, PoolTimeout) as exc:
            await asyncio.sleep(_wait(attempt, retries, exc))
    raise AssertionError("unreachable")


def read(pool: ConnectionPool[Any], query: Query[T], retries: int, timeout: float) -> T:
    """Run ``query``, which writes nothing, on ``pool``, retried like :func:`push`: what
    an enqueue without a connection reads first (a task's definition) is as reliable as
    the enqueue itself."""
    for attempt in range(retries + 1):
        try:
            with pool.connection(timeout=timeout) as conn:
                return query.run(conn)
        except (*TRANSIENT, PoolTimeout) as exc:
            time.sleep(_wait(attempt, retries, exc))
    raise AssertionError("unreachable")


async def aread(pool: AsyncConnectionPool[Any], query: Query[T], retries: int,
                timeout: float) -> T:
    """:func:`read` on an async pool."""
    for attempt in range(retries + 1):
        try:
            async with pool.connection(timeout=timeout) as conn:
                return await query.arun(conn)
        except (*TRANSIENT, PoolTimeout) as exc:
            await asyncio.sleep(_wait(attempt, retries, exc))
    raise AssertionError("unreachable")


def _wait(attempt: int, retries: int, exc: BaseException) -> float:
    """After try ``attempt`` failed with ``exc``: raise it once the retries are spent,
    else return the seconds to wait before the next try."""
    if attempt == retries:
        raise exc
    log.warning("enqueue failed (%s); retrying (%d)", exc, attempt + 1)
    return backoff(attempt)


def backoff(attempt: int) -> float:
    return float(min(3.0, 0.1 * 2**attempt))
