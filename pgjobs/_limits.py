"""Per-key limits of a task: ``@app.job(concurrency_key=..., concurrency_limit=...,
rate_limit=..., rate_period=...)``.

The key is computed at enqueue from the job's keyword arguments and stored on the job
(``jobs.concurrency_key``) together with the limits, so the claim can enforce them without
the task's code. Queue-wide limits live in the ``queues`` table instead (docs/queues.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ._errors import InvalidArgs, InvalidOption

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

    from ._queries import Queries

MAX_KEY_LENGTH = 1000
OPTION_NAMES = ("concurrency_key", "concurrency_limit", "rate_limit", "rate_period")

NO_KEY_LIMIT: Mapping[str, Any] = {
    "concurrency_key": None, "concurrency_limit": None, "rate_limit": None, "rate_period": None,
}
"""The jobs columns of a job without a per-key limit."""

KeySource = str | Callable[..., Any]


@dataclass(frozen=True, slots=True)
class KeyLimit:
    """At most ``concurrency_limit`` running jobs and ``rate_limit`` starts per
    ``rate_period`` for each value of ``key``, across all workers."""

    key: KeySource
    """A format string over the job's arguments (``"customer:{customer_id}"``), or a
    callable taking them as keyword arguments and returning the key (None: this job has no
    key and no limit). Keys are global: tasks that compute the same key share its limit."""
    concurrency_limit: int | None = None
    rate_limit: int | None = None
    rate_period: timedelta | None = None

    @classmethod
    def pop_options(cls, task: str, options: dict[str, Any]) -> KeyLimit | None:
        """Take the limit options out of ``@app.job(...)``'s options (None: no limit)."""
        key, limit, rate, period = (options.pop(name, None) for name in OPTION_NAMES)
        if key is None and limit is None and rate is None and period is None:
            return None
        if limit is None and rate is None:
            raise InvalidOption(
                f"{task}: concurrency_key needs concurrency_limit=N and/or rate_limit=N "
                "with rate_period=timedelta(...)"
            )
        for name, value in (("concurrency_limit", limit), ("rate_limit", rate)):
            if value is not None and (type(value) is not int or value < 1):
                raise InvalidOption(f"{task}: {name} must be an int >= 1, not {value!r}")
        if (rate is None) != (period is None):
            raise InvalidOption(
                f"{task}: give rate_limit and rate_period together "
                "(for example rate_limit=10, rate_period=timedelta(seconds=1))"
            )
        if isinstance(period, int | float) and not isinstance(period, bool):
            period = timedelta(seconds=period)
        if period is not None and (not isinstance(period, timedelta) or period <= timedelta(0)):
            raise InvalidOption(f"{task}: rate_period must be a positive timedelta, not {period!r}")
        if key is None:
            key = task  # a task-wide limit
        if not (isinstance(key, str) and key) and not callable(key):
            raise InvalidOption(
                f"{task}: concurrency_key must be a non-empty format string such as "
                "'customer:{customer_id}' or a callable of the job's arguments"
            )
        return cls(key, limit, rate, period)

    def columns(self, task: str, kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
        """The ``jobs`` columns for one job with arguments ``kwargs``."""
        key = self._key(task, kwargs)
        if key is None:
            return NO_KEY_LIMIT
        return {
            "concurrency_key": key,
            "concurrency_limit": self.concurrency_limit,
            "rate_limit": self.rate_limit,
            "rate_period": self.rate_period,
        }

    def _key(self, task: str, kwargs: Mapping[str, Any]) -> str | None:
        if callable(self.key):
            value = self.key(**kwargs)
            if value is None:
                return None
            if not isinstance(value, str):
                raise InvalidArgs(
                    f"{task}: the concurrency_key callable returned {value!r}; return a str "
                    "(or None for no limit)"
                )
        else:
            try:
                value = self.key.format_map(kwargs)
            except (KeyError, IndexError, AttributeError, ValueError) as exc:
                raise InvalidArgs(
                    f"{task}: concurrency_key {self.key!r} cannot be formatted from the job's "
                    f"arguments ({type(exc).__name__}: {exc}); name keyword arguments the "
                    "task takes, as in 'customer:{customer_id}'"
                ) from None
        if not 1 <= len(value) <= MAX_KEY_LENGTH or "\x00" in value:
            raise InvalidArgs(
                f"{task}: concurrency key must be 1-{MAX_KEY_LENGTH} characters without NUL, "
                f"got {len(value)} characters"
            )
        return value


class ClaimRouter:
    """Chooses a worker's claim statement.

    ``job_claim`` plans in a fraction of the time of ``job_claim_limited``, and a claim is
    planned on every call, so a worker sends it while no limit concerns it. It sends
    ``job_claim_limited`` when one of its queues has a limit (re-read about once a
    second) or one of its tasks has a concurrency key, and once a second anyway (a
    sweep): keyed jobs that this worker's code does not know as keyed (enqueued by
    another version of the code, or into another queue) are then claimed too.
    Correctness never depends on this choice: ``job_claim`` skips limited queues and
    keyed jobs by itself.

    The periodic work (re-reading the limits, the sweep) is done by :meth:`when_idle`,
    once the worker has claimed every job due, so that it never stands between a
    notified job and its claim; :meth:`statement` does it only when it is overdue, for a
    worker so busy that it is never idle.
    """

    def __init__(self, queries: Queries, queues: Sequence[str], keyed: bool,
                 refresh: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.queries = queries
        self.queues = list(queues)
        self.keyed = keyed
        self.refresh = refresh
        self.clock = clock
        self.limited: frozenset[str] = frozenset()
        self.next_refresh = 0.0
        self.next_sweep = 0.0

    async def statement(self, conn: psycopg.AsyncConnection[Any]) -> sql.SQL | sql.Composed:
        """The statement for a claim now."""
        now = self.clock()
        if now >= self.next_refresh + self.refresh:
            await self._refresh(conn, now)
        if self.keyed or self.limited or now >= self.next_sweep + self.refresh:
            self.next_sweep = now + self.refresh
            return self.queries.job_claim_limited
        return self.queries.job_claim

    async def when_idle(self, conn: psycopg.AsyncConnection[Any]) -> sql.SQL | None:
        """Called when a claim found no more jobs due: re-read the limits if due, and
        return the sweep's statement if one is due (else None)."""
        now = self.clock()
        if now >= self.next_refresh:
            await self._refresh(conn, now)
        if self.keyed or self.limited or now < self.next_sweep:
            return None  # every claim is limited already, or a sweep is not due
        self.next_sweep = now + self.refresh
        return self.queries.job_claim_limited

    async def _refresh(self, conn: psycopg.AsyncConnection[Any], now: float) -> None:
        self.next_refresh = now + self.refresh
        cursor = await conn.execute(self.queries.queue_limited, {"queues": self.queues})
        self.limited = frozenset(str(row[0]) for row in await cursor.fetchall())
