"""Enqueue: validation, row building and the statements that write the rows, shared by
the sync and async entry points.

Validation and row building run before any SQL is sent, so bad input is refused with a
typed error and the caller's transaction is untouched. The entry points in ``_app`` only
pick a connection and run the statement built here: one INSERT (``Statement``), or for
large ``enqueue_many`` calls a reservation and a binary COPY (``CopyStatement``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from itertools import repeat
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import pq, sql

from ._db import atuples, tuples
from ._errors import (
    ArgsTooLarge,
    BatchFinished,
    DuplicateJob,
    InvalidArgs,
    InvalidName,
    InvalidOption,
    SchemaNotReady,
)
from ._limits import NO_KEY_LIMIT

if TYPE_CHECKING:
    from ._app import Task

AnyConnection = psycopg.Connection[Any]
AnyAsyncConnection = psycopg.AsyncConnection[Any]

QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,62}")
TASK_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:<>\-]{0,254}")
SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,49}")
PRIORITY_RANGE = range(-32768, 32768)  # smallint
MAX_ATTEMPTS_LIMIT = 2**31 - 1  # integer


def check_name(kind: str, value: object, pattern: re.Pattern[str], hint: str) -> str:
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise InvalidName(f"invalid {kind} name {value!r}: {hint}")
    return value


def check_queue(value: object) -> str:
    return check_name(
        "queue", value, QUEUE_NAME,
        "use 1-63 characters from letters, digits, '_', '.', ':' and '-', "
        "starting with a letter or digit",
    )


def check_task_name(value: object) -> str:
    return check_name(
        "task", value, TASK_NAME,
        "use 1-255 characters from letters, digits, '_', '.', ':', '<', '>' and '-', "
        "starting with a letter or '_' (pass @app.job(name=...) to choose one)",
    )


def check_schema(value: object) -> str:
    hint = "use 1-50 characters from letters, digits and '_', starting with a letter or '_'"
    if isinstance(value, str) and value.lower() == "public":
        # pgjobs keeps its own alembic_version table in its schema; in public it would be
        # the application's own and break its migrations.
        raise InvalidName(f"invalid schema name {value!r}: pgjobs needs a schema of its own")
    if isinstance(value, str) and value.startswith("pg_"):
        # PostgreSQL refuses to create schemas with this prefix (reserved for its own).
        raise InvalidName(f"invalid schema name {value!r}: the prefix 'pg_' is reserved; {hint}")
    return check_name("schema", value, SCHEMA_NAME, hint)


@dataclass(frozen=True, slots=True)
class JobOptions:
    """Per-task defaults, overridable per enqueue with ``task.options(...)``."""

    queue: str = "default"
    """Queue the job goes to; workers choose queues with ``--queues``."""
    priority: int = 0
    """Lower runs first within a queue (-32768..32767)."""
    max_attempts: int = 25
    """Attempts before the job is dead (1 or more). Recoveries after a lost worker do not
    count as attempts."""
    run_at: datetime | None = None
    """Do not start before this time (timezone-aware). Exclusive with ``run_in``."""
    run_in: timedelta | None = None
    """Do not start before the database's now() plus this delay. Exclusive with ``run_at``."""
    expires_at: datetime | None = None
    """Never start after this time: the job ends ``expired``. Exclusive with ``expires_in``."""
    expires_in: timedelta | None = None
    """Expire this long after the job's run_at (Sidekiq's semantics)."""
    unique_for: timedelta | None = None
    """Make the job unique for this long from its run_at: while the hold lives, enqueueing
    the same key returns the existing job. The key defaults to task + queue + args."""
    unique_key: str | None = None
    """An explicit unique key (held until released when ``unique_for`` is not given)."""
    unique_until: str = "success"
    """When the hold ends early: ``"success"`` (the job ends: succeeded, dead, cancelled or
    expired; a job waiting to retry keeps it) or ``"start"`` (the job is claimed)."""
    on_duplicate: str = "return"
    """``"return"``: a duplicate enqueue returns the holder (``.duplicate`` is true);
    ``"raise"``: it raises :class:`pgjobs.DuplicateJob`."""
    batch_id: int | None = None
    """The batch the job joins (``options(batch=batch)``)."""

    def __post_init__(self) -> None:
        check_queue(self.queue)
        if type(self.priority) is not int or self.priority not in PRIORITY_RANGE:
            raise InvalidOption(f"priority must be an int in -32768..32767, not {self.priority!r}")
        if type(self.max_attempts) is not int or not 1 <= self.max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise InvalidOption(
                f"max_attempts must be an int in 1..{MAX_ATTEMPTS_LIMIT}, not {self.max_attempts!r}"
            )
        _exclusive(self, "run_at", "run_in")
        _exclusive(self, "expires_at", "expires_in")
        for name in ("run_at", "expires_at"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, datetime) or value.utcoffset() is None
            ):
                raise InvalidOption(
                    f"{name} must be a timezone-aware datetime (for example "
                    f"datetime.now(timezone.utc) + ...), not {value!r}"
                )
        if self.run_in is not None and not isinstance(self.run_in, timedelta):
            raise InvalidOption(f"run_in must be a timedelta, not {self.run_in!r}")
        if self.expires_in is not None and (
            not isinstance(self.expires_in, timedelta) or self.expires_in <= timedelta(0)
        ):
            raise InvalidOption(f"expires_in must be a positive timedelta, not {self.expires_in!r}")
        self._check_unique()
        if self.batch_id is not None and type(self.batch_id) is not int:
            raise InvalidOption(f"batch must be a pgjobs Batch or its id, not {self.batch_id!r}")

    def _check_unique(self) -> None:
        if self.unique_for is not None and (
            not isinstance(self.unique_for, timedelta) or self.unique_for <= timedelta(0)
        ):
            raise InvalidOption(f"unique_for must be a positive timedelta, not {self.unique_for!r}")
        key = self.unique_key
        if key is not None and (
            not isinstance(key, str) or not 1 <= len(key) <= 500 or "\x00" in key
        ):
            raise InvalidOption("unique_key must be a string of 1-500 characters without NUL")
        if self.unique_until not in ("success", "start"):
            raise InvalidOption(
                f"unique_until must be 'success' or 'start', not {self.unique_until!r}"
            )
        if self.on_duplicate not in ("return", "raise"):
            raise InvalidOption(
                f"on_duplicate must be 'return' or 'raise', not {self.on_duplicate!r}"
            )

    @property
    def unique(self) -> bool:
        return self.unique_for is not None or self.unique_key is not None

    @property
    def special(self) -> bool:
        """Needs the unique/batch insert statement rather than the plain one."""
        return self.unique or self.batch_id is not None

    def merge(self, changes: Mapping[str, Any]) -> JobOptions:
        """A copy with ``changes``; setting one of an exclusive pair clears the other."""
        unknown = set(changes) - OPTION_NAMES
        if unknown:
            raise InvalidOption(
                f"unknown option(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(OPTION_NAMES))}"
            )
        updates = dict(changes)
        if "batch" in updates:
            batch = updates.pop("batch")
            updates["batch_id"] = getattr(batch, "id", batch)
        for a, b in (("run_at", "run_in"), ("expires_at", "expires_in")):
            if a in updates and b not in updates:
                updates[b] = None
            elif b in updates and a not in updates:
                updates[a] = None
        return replace(self, **updates)


def _exclusive(opts: JobOptions, a: str, b: str) -> None:
    if getattr(opts, a) is not None and getattr(opts, b) is not None:
        raise InvalidOption(f"give {a} or {b}, not both")


OPTION_NAMES = frozenset(f.name for f in fields(JobOptions)) | {"batch"}


@dataclass(frozen=True, slots=True)
class Enqueued:
    """What an enqueue returns."""

    id: int
    """The job's id in ``jobs``."""
    duplicate: bool = False
    """True when a unique key was already held: ``id`` is the holder's id."""


# One encoder for every enqueue: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _fast_encoder() -> Callable[[Any], str] | None:
    """The C encoder behind ``_ENCODER``, made once, for values ``_plain`` vouched for:
    without the cycle check (``_plain`` bounds the depth) and the per-call setup of
    ``JSONEncoder.encode``, it takes 40-60% less time. None when this Python has no C
    accelerator or it does not behave as expected; ``_ENCODER`` is used then."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    try:
        chunks = make(None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",",
                      False, False, False)

        def encode(value: Any) -> str:
            return "".join(chunks(value, 0))

        sample = {"a": [1, 2.5, None, True, "\u00e9\x00"], "b": {}}
        if encode(sample) != _ENCODER.encode(sample):
            return None
    except Exception:  # an internal API that changed: use the public one
        return None
    return encode


_FAST_ENCODE = _fast_encoder()


@dataclass(frozen=True, slots=True)
class ArgsEncoder:
    """Turns keyword arguments into the JSON text stored in ``jobs.args``."""

    max_bytes: int | None
    allowed: frozenset[str] | None = None
    """Parameter names the handler accepts (None: any, it takes **kwargs)."""
    required: frozenset[str] = field(default_factory=frozenset)
    task: str = ""

    def encode(self, kwargs: Mapping[str, Any]) -> str:
        if type(kwargs) is not dict and not isinstance(kwargs, Mapping):
            raise InvalidArgs(f"job args must be a mapping of keyword arguments, not {kwargs!r}")
        self._check_signature(kwargs)
        # The common case, plain dicts/lists/scalars, is walked once without building the
        # paths of error messages; anything else (or anything suspect in the encoded text)
        # takes the full check, which names the offending value.
        fast = _FAST_ENCODE if _FAST_ENCODE is not None and _plain(kwargs, 0) else None
        if fast is None:
            self._check(kwargs)
        try:
            text = _ENCODER.encode(kwargs) if fast is None else fast(kwargs)
        except (TypeError, ValueError) as exc:
            raise InvalidArgs(
                f"job args for {self.task or 'task'} are not JSON-serialisable ({exc}); pass "
                "plain str/int/float/bool/None, lists and dicts, e.g. ids rather than objects"
            ) from None
        if fast is not None and "\\u0000" in text:  # maybe a NUL in a string
            self._check(kwargs)
        if text.isascii():
            size = len(text)
        else:
            try:
                size = len(text.encode("utf-8"))
            except UnicodeEncodeError:  # a lone surrogate somewhere
                self._check(kwargs)
                raise
        if self.max_bytes is not None and size > self.max_bytes:
            raise ArgsTooLarge(
                f"job args for {self.task or 'task'} are {size} bytes, over the limit of "
                f"{self.max_bytes}: store large data in your own table and pass its id "
                "(or raise App(max_args_bytes=...))"
            )
        return text

    def _check(self, kwargs: Mapping[str, Any]) -> None:
        try:
            _check_json_value(kwargs, "args")
        except RecursionError:
            raise InvalidArgs(
                f"job args for {self.task or 'task'} contain a reference cycle or are nested "
                "too deeply to encode as JSON"
            ) from None

    def _check_signature(self, kwargs: Mapping[str, Any]) -> None:
        keys = kwargs.keys()
        if self.required and not self.required <= keys:
            missing = ", ".join(sorted(self.required - keys))
            raise InvalidArgs(f"{self.task}() is missing argument(s): {missing}")
        if self.allowed is not None and not self.allowed.issuperset(keys):
            extra = ", ".join(sorted(keys - self.allowed))
            raise InvalidArgs(f"{self.task}() got unexpected argument(s): {extra}")


MAX_FLOAT = 1e16
MAX_ARGS_DEPTH = 100
"""Deepest nesting of lists and objects in args. Deeper values would hit Python's
recursion limit when encoded here or decoded by a worker (a RecursionError, not a typed
error), and no real keyword arguments need them."""


def _plain(value: Any, depth: int) -> bool:
    """True when ``value`` is made only of dicts with str keys, lists, tuples, str, int,
    bool, None and floats under ``MAX_FLOAT``, at most ``MAX_ARGS_DEPTH`` deep: what
    ``_check_json_value`` would accept, except for NUL characters and lone surrogates in
    strings, which ``ArgsEncoder.encode`` finds in the encoded text. False says only
    "check fully", not "refuse"."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is float:
        return bool(abs(value) < MAX_FLOAT)
    if depth >= MAX_ARGS_DEPTH:
        return False
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not _plain(item, depth + 1):
                return False
        return True
    if kind is list or kind is tuple:
        return all(_plain(item, depth + 1) for item in value)
    return False


def _check_json_value(value: Any, path: str, depth: int = 0) -> None:
    """Reject what JSON would silently change or PostgreSQL would refuse."""
    if depth > MAX_ARGS_DEPTH:
        raise InvalidArgs(
            f"args are nested deeper than {MAX_ARGS_DEPTH} lists/objects (at {path[:200]}); "
            "flatten them or store the data in your own table and pass its id"
        )
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidArgs(f"{path} contains a NUL character, which jsonb cannot store")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgs(f"{path} is not valid Unicode (a lone surrogate)") from None
    elif isinstance(value, float):
        if abs(value) >= MAX_FLOAT:  # also catches infinities; NaN fails in json.dumps
            raise InvalidArgs(
                f"{path} is the float {value!r}: jsonb keeps numbers as decimals and would "
                "hand a float of 1e16 or more back as an int; pass an int or a string"
            )
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidArgs(
                    f"{path} has a non-string key {key!r}; JSON objects only have string keys"
                )
            _check_json_value(key, f"{path} key", depth + 1)
            _check_json_value(item, f"{path}[{key!r}]", depth + 1)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_json_value(item, f"{path}[{index}]", depth + 1)


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


def unique_key(task: str, opts: JobOptions, kwargs: Mapping[str, Any]) -> str | None:
    """The job's unique key: the explicit one, or task + queue + canonical args."""
    if opts.unique_key is not None:
        return opts.unique_key
    if opts.unique_for is None:
        return None
    canonical = json.dumps(kwargs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:40]
    return f"{task}:{opts.queue}:{digest}"


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

    def add(
        self, task: str, opts: JobOptions, args: str, kwargs: Mapping[str, Any],
        limits: Mapping[str, Any] = NO_KEY_LIMIT,
    ) -> None:
        key = unique_key(task, opts, kwargs)
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

    def params(self, channel: str | None, sequence: str, batch_id: int | None) -> dict[str, Any]:
        params = self.rows.params(channel)
        params.update(
            unique_key=self.unique_key, unique_for=self.unique_for,
            unique_until=self.unique_until, sequence=sequence, batch_id=batch_id,
        )
        return params

    def results(self, sent: list[tuple[int, bool]]) -> list[Enqueued]:
        """Map the statement's (id, duplicate) rows back onto every input row."""
        return [
            Enqueued(sent[index][0], sent[index][1] or repeated)
            for index, repeated in self.slots
        ]
ZERO = timedelta(0)


def job_params(
    task: str, opts: JobOptions, args: str, channel: str | None,
    limits: Mapping[str, Any] = NO_KEY_LIMIT,
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
    }


@contextmanager
def translated_errors(schema: str) -> Iterator[None]:
    """Turn 'no such table' into an error that says to run ``pgjobs migrate``, and
    pgjobs' own SQLSTATEs (raised by its functions) into their typed errors."""
    try:
        yield
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName,
            psycopg.errors.UndefinedFunction) as exc:
        raise SchemaNotReady(schema) from exc
    except psycopg.Error as exc:
        if exc.sqlstate == "PJ001":
            diag = exc.diag
            raise BatchFinished(f"{diag.message_primary} ({diag.message_hint})") from exc
        raise


def without_results(rows: list[tuple[Any, ...]]) -> list[Enqueued]:
    """The rows of a statement that returns only job ids: none is a duplicate."""
    return [Enqueued(row[0]) for row in rows]


COPY_MIN_ROWS = 500
"""``enqueue_many`` calls of this many rows or more, without unique keys, send their rows
with binary COPY: two more round trips than one INSERT, and less work per row than
unpacking a JSON parameter. Measured per call (benchmarks/enqueue_many_paths.py): even
at 500 rows, about 1.2x faster at 10,000."""

# Column types of job_copy, in order. args goes as jsonb's binary form (a version byte,
# then the JSON text), declared bytea so that the driver sends those bytes untouched.
COPY_TYPES = ("int8", "text", "text", "bytea", "int2", "int4", "timestamptz", "timestamptz",
              "int8", "text", "int4", "int4", "interval")
JSONB_VERSION = b"\x01"


@dataclass(frozen=True, slots=True)
class CopyStatement:
    """Many jobs without unique keys: ids, times, the batch count and the notification
    from ``job_reserve_many``, then the rows by binary COPY, in the caller's transaction."""

    task: Task[..., Any]
    params: dict[str, Any]
    args: list[str]
    """Each row's encoded args, in input order."""
    keys: list[str | None] | None
    """Each row's concurrency key (tasks with a per-key limit only)."""
    kwargs: list[Mapping[str, Any]]
    """The rows as given, for the INSERT statement when COPY cannot be used."""

    @property
    def size(self) -> int:
        return len(self.args)

    def run(self, conn: AnyConnection) -> list[Enqueued]:
        mode = _copy_mode(conn)
        if mode == INSERT:
            return self.task._statement(self.kwargs, copy=False).run(conn)
        with conn.transaction() if mode == OWN_TRANSACTION else nullcontext():
            return self._run(conn)

    def _run(self, conn: AnyConnection) -> list[Enqueued]:
        queries = self.task.app.queries
        with translated_errors(self.task.app.config.schema):
            cursor = tuples(conn)
            reserved = cursor.execute(queries.job_reserve_many, self.params).fetchone()
            assert reserved is not None
            with cursor.copy(queries.job_copy) as copy:
                copy.set_types(COPY_TYPES)
                for row in self.rows(*reserved[:3]):
                    copy.write_row(row)
        return [Enqueued(job_id) for job_id in reserved[0]]

    async def arun(self, aconn: AnyAsyncConnection) -> list[Enqueued]:
        mode = _copy_mode(aconn)
        if mode == INSERT:
            return await self.task._statement(self.kwargs, copy=False).arun(aconn)
        async with aconn.transaction() if mode == OWN_TRANSACTION else nullcontext():
            return await self._arun(aconn)

    async def _arun(self, aconn: AnyAsyncConnection) -> list[Enqueued]:
        queries = self.task.app.queries
        with translated_errors(self.task.app.config.schema):
            cursor = atuples(aconn)
            await cursor.execute(queries.job_reserve_many, self.params)
            reserved = await cursor.fetchone()
            assert reserved is not None
            async with cursor.copy(queries.job_copy) as copy:
                copy.set_types(COPY_TYPES)
                for row in self.rows(*reserved[:3]):
                    await copy.write_row(row)
        return [Enqueued(job_id) for job_id in reserved[0]]

    def rows(self, ids: list[int], due: datetime, expires: datetime | None
             ) -> Iterator[tuple[Any, ...]]:
        """job_copy's rows; a row without a concurrency key has no per-key limit."""
        task, opts = self.task, self.task.opts
        head = (opts.queue, task.name)
        tail = (opts.priority, opts.max_attempts, due, expires, opts.batch_id)
        limits = task._limit_values()
        limited = (limits["concurrency_limit"], limits["rate_limit"], limits["rate_period"])
        unlimited = (None, None, None)
        keys = self.keys if self.keys is not None else repeat(None)
        for job_id, args, key in zip(ids, self.args, keys, strict=False):
            yield (job_id, *head, JSONB_VERSION + args.encode(), *tail, key,
                   *(unlimited if key is None else limited))


@dataclass(frozen=True, slots=True)
class Statement:
    """One enqueue statement, ready to run on a sync or async connection."""

    task: Task[..., Any]
    query: sql.SQL | sql.Composed
    params: dict[str, Any]
    size: int
    decode: Callable[[list[tuple[Any, ...]]], list[Enqueued]]
    keys: list[str | None] = field(default_factory=list)
    """Each input row's unique key (unique enqueues only)."""

    def run(self, conn: AnyConnection) -> list[Enqueued]:
        with translated_errors(self.task.app.config.schema):
            rows = tuples(conn).execute(self.query, self.params).fetchall()
        return self.check(self.decode(rows))

    async def arun(self, aconn: AnyAsyncConnection) -> list[Enqueued]:
        with translated_errors(self.task.app.config.schema):
            cursor = await atuples(aconn).execute(self.query, self.params)
            rows = await cursor.fetchall()
        return self.check(self.decode(rows))

    def check(self, results: list[Enqueued]) -> list[Enqueued]:
        opts = self.task.opts
        if opts.on_duplicate == "raise":
            for key, result in zip(self.keys, results, strict=True):
                if result.duplicate:
                    raise DuplicateJob(self.task.name, key or "", result.id)
        return results


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
