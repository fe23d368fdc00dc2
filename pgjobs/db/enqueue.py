"""Writing new jobs: the statement that enqueues a validated set of jobs of one task.

The client validates and encodes (``client.task``); this module only chooses how to write
what it is handed (``NewJobs``) and runs it on the caller's connection, sync or async:

    one job                    job_insert: one INSERT, its NOTIFY in the same statement
    many jobs                  job_insert_many: one INSERT of a JSON array of rows
    unique keys, or a batch    job_insert_special: holds, jobs and batch count together
    500+ jobs, no unique key   job_reserve_many, then the rows by binary COPY
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from itertools import repeat
from typing import Any

from psycopg import pq, sql
from psycopg.rows import tuple_row

from ..core.errors import DuplicateJob
from ..core.limits import NO_KEY_LIMIT
from ..core.options import JobOptions
from ..core.types import Enqueued
from .queries import Queries
from .statement import AnyAsyncConnection, AnyConnection, translated_errors

ZERO = timedelta(0)

COPY_MIN_ROWS = 2000
"""``enqueue_many`` calls of this many rows or more, without unique keys, send their rows
with binary COPY: two more round trips than one INSERT, and less work per row than
unpacking a JSON parameter. Measured per call (benchmarks/enqueue_many_paths.py, round
2): the INSERT is faster up to 1,000 rows (0.79-0.87 of COPY's time), COPY from 2,000
(1.1x faster) to 10,000 (1.45x)."""

# Column types of job_copy, in order. args goes as jsonb's binary form (a version byte,
# then the JSON text), declared bytea so that the driver sends those bytes untouched.
COPY_TYPES = ("int8", "text", "text", "bytea", "int2", "int4", "timestamptz", "timestamptz",
              "int8", "text", "int4", "int4", "interval", "bytea")
JSONB_VERSION = b"\x01"

RESOLVE_TRIES = 5
"""Rounds of looking up unique-key holders committed after an enqueue's snapshot (one is
almost always enough; each later round means a holder ended meanwhile)."""


@dataclass(frozen=True, slots=True)
class NewJobs:
    """Jobs of one task, validated and encoded, ready to be written."""

    task: str
    opts: JobOptions
    args: list[str]
    """Each job's args, encoded as JSON text, in input order."""
    keys: list[str | None] | None = None
    """Each job's concurrency key (None for the list: the task has no per-key limit; None
    for one job: that job has no key, hence no limit)."""
    shared_limits: Mapping[str, Any] = field(default_factory=lambda: NO_KEY_LIMIT)
    """The limit columns every keyed job of the task shares (``KeyLimit.shared_columns``)."""
    unique_keys: list[str | None] | None = None
    """Each job's unique key (unique enqueues only)."""
    channel: str | None = None
    """Where to NOTIFY workers when the jobs commit (None: nobody)."""
    meta: str | None = None
    """Every job's ``meta``, as JSON text (None: empty), from enqueue middleware."""

    def __len__(self) -> int:
        return len(self.args)

    def limits(self, index: int) -> Mapping[str, Any]:
        """The per-key limit columns of job ``index``."""
        key = None if self.keys is None else self.keys[index]
        if key is None:
            return NO_KEY_LIMIT
        return {**self.shared_limits, "concurrency_key": key}


def job_params(task: str, opts: JobOptions, args: str, channel: str | None,
               limits: Mapping[str, Any] = NO_KEY_LIMIT, meta: str | None = None
               ) -> dict[str, Any]:
    """Parameters of ``job_insert`` for one job (times relative to the database clock);
    ``limits`` are the per-key limit columns (``KeyLimit.columns``)."""
    return {
        **limits,
        "queue": opts.queue,
        "task": task,
        "args": args,
        "priority": opts.priority,
        "max_attempts": opts.max_attempts,
        "run_at": opts.run_at,
        "run_in": opts.run_in or ZERO,
        "expires_at": opts.expires_at,
        "expires_in": opts.expires_in,
        "channel": channel,
        "meta": meta,
    }


def statement(q: Queries, jobs: NewJobs, copy: bool = True) -> AnyStatement:
    """The statement that writes ``jobs`` (see the module docstring for the choice)."""
    opts = jobs.opts
    if copy and len(jobs) >= COPY_MIN_ROWS and not opts.unique:
        return CopyStatement(q, jobs)
    if opts.special:
        special = SpecialRows()
        for index, args in enumerate(jobs.args):
            key = None if jobs.unique_keys is None else jobs.unique_keys[index]
            special.add(jobs.task, opts, args, key, jobs.limits(index))
        params = special.params(jobs.channel, q.sequence, opts.batch_id, jobs.meta)
        return Statement(q, jobs, q.job_insert_special, params, special.results,
                         special.input_keys, special)
    if len(jobs) == 1:
        params = job_params(jobs.task, opts, jobs.args[0], jobs.channel, jobs.limits(0),
                            jobs.meta)
        return Statement(q, jobs, q.job_insert, params, without_results)
    params = job_params(jobs.task, opts, "", jobs.channel, jobs.shared_limits, jobs.meta)
    params["rows"] = many_rows(jobs.args, jobs.keys)
    return Statement(q, jobs, q.job_insert_many, params, without_results)


@dataclass(frozen=True, slots=True)
class Rows:
    """Column arrays for ``job_insert_special``, in input order."""

    queue: list[str] = field(default_factory=list)
    task: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    priority: list[int] = field(default_factory=list)
    max_attempts: list[int] = field(default_factory=list)
    run_at: list[datetime | None] = field(default_factory=list)
    run_in: list[timedelta] = field(default_factory=list)
    expires_at: list[datetime | None] = field(default_factory=list)
    expires_in: list[timedelta | None] = field(default_factory=list)
    concurrency_key: list[str | None] = field(default_factory=list)
    concurrency_limit: list[int | None] = field(default_factory=list)
    rate_limit: list[int | None] = field(default_factory=list)
    rate_period: list[timedelta | None] = field(default_factory=list)

    def add(
        self, task: str, opts: JobOptions, args: str, limits: Mapping[str, Any] = NO_KEY_LIMIT
    ) -> None:
        row = job_params(task, opts, args, channel="", limits=limits)
        for name in ROW_COLUMNS:
            getattr(self, name).append(row[name])

    def params(self, channel: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {name: getattr(self, name) for name in ROW_COLUMNS}
        params["channel"] = channel
        return params

    def __len__(self) -> int:
        return len(self.task)


ROW_COLUMNS = tuple(f.name for f in fields(Rows))


def many_rows(documents: list[str], keys: list[str | None] | None) -> str:
    """``job_insert_many``'s rows: one JSON array of [args, concurrency key] pairs, the
    args already encoded (they are spliced in, not encoded twice)."""
    if keys is None:
        return "[" + ",".join(f"[{doc},null]" for doc in documents) + "]"
    return "[" + ",".join(
        f"[{doc},{json.dumps(key)}]" for doc, key in zip(documents, keys, strict=True)) + "]"


@dataclass(slots=True)
class SpecialRows:
    """Column arrays for ``job_insert_special`` (unique keys and/or a batch).

    Rows whose unique key repeats an earlier row of the same call are not sent: they
    resolve to that row's result, as a duplicate."""

    rows: Rows = field(default_factory=Rows)
    unique_key: list[str | None] = field(default_factory=list)
    unique_for: list[timedelta | None] = field(default_factory=list)
    unique_until: list[str] = field(default_factory=list)
    slots: list[tuple[int, bool]] = field(default_factory=list)
    """For each input row: (index of the sent row it resolves to, repeated in this call)."""
    input_keys: list[str | None] = field(default_factory=list)
    """For each input row: its unique key."""
    _seen: dict[str, int] = field(default_factory=dict)

    def add(self, task: str, opts: JobOptions, args: str, key: str | None,
            limits: Mapping[str, Any] = NO_KEY_LIMIT) -> None:
        self.input_keys.append(key)
        if key is not None and key in self._seen:
            self.slots.append((self._seen[key], True))
            return
        index = len(self.rows)
        if key is not None:
            self._seen[key] = index
        self.rows.add(task, opts, args, limits)
        self.unique_key.append(key)
        self.unique_for.append(opts.unique_for)
        self.unique_until.append(opts.unique_until)
        self.slots.append((index, False))

    def only(self, indices: list[int]) -> SpecialRows:
        """The sent rows at ``indices`` (each with its unique key), as rows to send."""
        subset = SpecialRows()
        for name in ROW_COLUMNS:
            getattr(subset.rows, name).extend(getattr(self.rows, name)[i] for i in indices)
        for name in ("unique_key", "unique_for", "unique_until"):
            getattr(subset, name).extend(getattr(self, name)[i] for i in indices)
        subset.slots.extend((n, False) for n in range(len(indices)))
        return subset

    def params(self, channel: str | None, sequence: str, batch_id: int | None,
               meta: str | None) -> dict[str, Any]:
        params = self.rows.params(channel)
        params.update(
            unique_key=self.unique_key, unique_for=self.unique_for,
            unique_until=self.unique_until, sequence=sequence, batch_id=batch_id, meta=meta,
        )
        return params

    def results(self, sent: list[tuple[Any, ...]]) -> list[Enqueued]:
        """Map the statement's (id, duplicate) rows back onto every input row."""
        return [
            Enqueued(sent[index][0], sent[index][1] or repeated)
            for index, repeated in self.slots
        ]


def without_results(rows: list[tuple[Any, ...]]) -> list[Enqueued]:
    """The rows of a statement that returns only job ids: none is a duplicate."""
    return [Enqueued(row[0]) for row in rows]


@dataclass(frozen=True, slots=True)
class Statement:
    """One enqueue statement, ready to run on a sync or async connection."""

    q: Queries
    jobs: NewJobs
    query: sql.SQL | sql.Composed
    params: dict[str, Any]
    decode: Callable[[list[tuple[Any, ...]]], list[Enqueued]]
    keys: list[str | None] = field(default_factory=list)
    """Each input row's unique key (unique enqueues only)."""
    special: SpecialRows | None = None
    """The rows sent, for unique enqueues: a holder committed after the statement's
    snapshot is looked up again (see job_insert_special)."""

    @property
    def size(self) -> int:
        return len(self.jobs)

    def run(self, conn: AnyConnection) -> list[Enqueued]:
        with translated_errors(self.q.schema):
            cursor = conn.cursor(row_factory=tuple_row)
            rows = cursor.execute(self.query, self.params).fetchall()
            for _ in range(RESOLVE_TRIES):
                if not (missing := self._missing(rows)):
                    break
                found = cursor.execute(*self._holders(missing)).fetchall()
                if not (missing := self._missing(rows := self._with_holders(rows, found))):
                    break
                again = self._again(missing)
                rows = self._merge(rows, missing, cursor.execute(again.query, again.params)
                                   .fetchall())
        return self.check(self.decode(rows))

    async def arun(self, aconn: AnyAsyncConnection) -> list[Enqueued]:
        with translated_errors(self.q.schema):
            cursor = aconn.cursor(row_factory=tuple_row)
            rows = await (await cursor.execute(self.query, self.params)).fetchall()
            for _ in range(RESOLVE_TRIES):
                if not (missing := self._missing(rows)):
                    break
                found = await (await cursor.execute(*self._holders(missing))).fetchall()
                if not (missing := self._missing(rows := self._with_holders(rows, found))):
                    break
                again = self._again(missing)
                rows = self._merge(rows, missing, await (
                    await cursor.execute(again.query, again.params)).fetchall())
        return self.check(self.decode(rows))

    # A unique enqueue's row whose holder this statement's snapshot could not see (it
    # committed meanwhile) comes back with a NULL id: the holder is read in a new
    # snapshot; if it has ended by then, the key is free and the row is enqueued again.

    @staticmethod
    def _missing(rows: list[tuple[Any, ...]]) -> list[int]:
        return [i for i, row in enumerate(rows) if row[0] is None]

    def _holders(self, missing: list[int]) -> tuple[sql.SQL | sql.Composed, dict[str, Any]]:
        assert self.special is not None
        return self.q.unique_key_holders, {
            "keys": [self.special.unique_key[i] for i in missing]}

    def _with_holders(self, rows: list[tuple[Any, ...]], found: list[tuple[Any, ...]]
                      ) -> list[tuple[Any, ...]]:
        assert self.special is not None
        holders, keys = dict(found), self.special.unique_key
        return [(holders[keys[i]], True) if row[0] is None and keys[i] in holders else row
                for i, row in enumerate(rows)]

    def _again(self, missing: list[int]) -> Statement:
        """The statement that enqueues the sent rows ``missing`` again."""
        assert self.special is not None
        subset = self.special.only(missing)
        params = subset.params(self.params["channel"], self.q.sequence, self.jobs.opts.batch_id,
                               self.jobs.meta)
        return replace(self, params=params, special=subset)

    @staticmethod
    def _merge(rows: list[tuple[Any, ...]], missing: list[int],
               again: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        merged = list(rows)
        for index, row in zip(missing, again, strict=True):
            merged[index] = row
        return merged

    def check(self, results: list[Enqueued]) -> list[Enqueued]:
        if self.jobs.opts.on_duplicate == "raise":
            for key, result in zip(self.keys, results, strict=True):
                if result.duplicate:
                    raise DuplicateJob(self.jobs.task, key or "", result.id)
        return results


@dataclass(frozen=True, slots=True)
class CopyStatement:
    """Many jobs without unique keys: ids, times, the batch count and the notification
    from ``job_reserve_many``, then the rows by binary COPY, in the caller's transaction."""

    q: Queries
    jobs: NewJobs

    @property
    def size(self) -> int:
        return len(self.jobs)

    def params(self) -> dict[str, Any]:
        jobs = self.jobs
        params = job_params(jobs.task, jobs.opts, "", jobs.channel)
        params.update(sequence=self.q.sequence, n=len(jobs), batch_id=jobs.opts.batch_id)
        return params

    def run(self, conn: AnyConnection) -> list[Enqueued]:
        mode = _copy_mode(conn)
        if mode == INSERT:
            return statement(self.q, self.jobs, copy=False).run(conn)
        with conn.transaction() if mode == OWN_TRANSACTION else nullcontext():
            return self._run(conn)

    def _run(self, conn: AnyConnection) -> list[Enqueued]:
        with translated_errors(self.q.schema):
            cursor = conn.cursor(row_factory=tuple_row)
            reserved = cursor.execute(self.q.job_reserve_many, self.params()).fetchone()
            assert reserved is not None
            with cursor.copy(self.q.job_copy) as copy:
                copy.set_types(COPY_TYPES)
                for row in self.rows(*reserved[:3]):
                    copy.write_row(row)
        return [Enqueued(job_id) for job_id in reserved[0]]

    async def arun(self, aconn: AnyAsyncConnection) -> list[Enqueued]:
        mode = _copy_mode(aconn)
        if mode == INSERT:
            return await statement(self.q, self.jobs, copy=False).arun(aconn)
        async with aconn.transaction() if mode == OWN_TRANSACTION else nullcontext():
            return await self._arun(aconn)

    async def _arun(self, aconn: AnyAsyncConnection) -> list[Enqueued]:
        with translated_errors(self.q.schema):
            cursor = aconn.cursor(row_factory=tuple_row)
            await cursor.execute(self.q.job_reserve_many, self.params())
            reserved = await cursor.fetchone()
            assert reserved is not None
            async with cursor.copy(self.q.job_copy) as copy:
                copy.set_types(COPY_TYPES)
                for row in self.rows(*reserved[:3]):
                    await copy.write_row(row)
        return [Enqueued(job_id) for job_id in reserved[0]]

    def rows(self, ids: list[int], due: datetime, expires: datetime | None
             ) -> Iterator[tuple[Any, ...]]:
        """job_copy's rows; a row without a concurrency key has no per-key limit."""
        jobs, opts = self.jobs, self.jobs.opts
        head = (opts.queue, jobs.task)
        tail = (opts.priority, opts.max_attempts, due, expires, opts.batch_id)
        shared = jobs.shared_limits
        limited = (shared["concurrency_limit"], shared["rate_limit"], shared["rate_period"])
        unlimited = (None, None, None)
        meta = JSONB_VERSION + (jobs.meta or "{}").encode()
        keys = jobs.keys if jobs.keys is not None else repeat(None)
        for job_id, args, key in zip(ids, jobs.args, keys, strict=False):
            yield (job_id, *head, JSONB_VERSION + args.encode(), *tail, key,
                   *(unlimited if key is None else limited), meta)


AnyStatement = Statement | CopyStatement


INSERT, IN_CALLERS, OWN_TRANSACTION = "insert", "in the caller's transaction", "own"


def _copy_mode(conn: AnyConnection | AnyAsyncConnection) -> str:
    """How a CopyStatement runs on ``conn``: as the INSERT statement in pipeline mode,
    where COPY is refused; in a short transaction of its own on an idle autocommit
    connection, so that nobody is woken (or a batch counted) for rows that are not
    there; else in the caller's transaction."""
    if conn.pgconn.pipeline_status != pq.PipelineStatus.OFF:
        return INSERT
    if conn.autocommit and conn.info.transaction_status == pq.TransactionStatus.IDLE:
        return OWN_TRANSACTION
    return IN_CALLERS

