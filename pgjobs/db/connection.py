"""The worker's own connections: one per role, reconnected with backoff when lost."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any

import psycopg

log = logging.getLogger("pgjobs.worker")

# Errors after which the connection is discarded and the work retried on a new one:
# the server restarted, a backend was terminated, or the network failed.
TRANSIENT = (psycopg.OperationalError, psycopg.errors.AdminShutdown, psycopg.InterfaceError)
# Errors after which the same statement can simply run again on the same connection.
RETRY_STATEMENT = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


class Connector:
    """Owns one autocommit connection for one role (claim, complete, heartbeat, listen)."""

    def __init__(
        self, dsn: str | Callable[[], str], role: str, prepare: bool = True,
        configure: Callable[[psycopg.AsyncConnection[Any]], None] | None = None,
        generic_plans: bool = False,
    ) -> None:
        self.dsn = dsn
        """The DSN, or a callable that returns it when the first connection is made."""
        self.role = role
        self.prepare = prepare
        self.configure = configure
        # Prepared statements keep one generic plan instead of being planned afresh: the
        # plan cache's own choice between them flips on small changes to a statement,
        # and job_claim_limited takes ~2 ms to plan (benchmarks/claim_plans.py).
        # (Session state: not behind PgBouncer, where nothing is prepared anyway.)
        self.generic_plans = generic_plans and prepare
        self.conn: psycopg.AsyncConnection[Any] | None = None
        self.failures = 0

    async def get(self) -> psycopg.AsyncConnection[Any]:
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.conn = await psycopg.AsyncConnection.connect(
                self.dsn() if callable(self.dsn) else self.dsn,
                autocommit=True,
                prepare_threshold=0 if self.prepare else None,
                application_name=f"pgjobs-{self.role}",
            )
            if self.configure is not None:
                self.configure(self.conn)
            if self.generic_plans:
                await self.conn.execute("SET plan_cache_mode = force_generic_plan")
            if self.failures:
                log.info("reconnected %s connection after %d failure(s)", self.role, self.failures)
            self.failures = 0
        return self.conn

    async def backoff(self, exc: BaseException) -> None:
        """Drop the connection after ``exc`` and sleep before the next try."""
        self.failures += 1
        delay = min(5.0, 0.05 * 2 ** min(self.failures, 7)) * random.uniform(0.5, 1.0)
        if self.failures == 1 or self.failures % 20 == 0:
            log.warning("%s connection failed (%s); retrying in %.2f s",
                        self.role, str(exc).strip().splitlines()[0] if str(exc) else exc, delay)
        await self.close()
        await asyncio.sleep(delay)

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None and not conn.closed:
            with contextlib.suppress(Exception):
                await conn.close()
