"""Every error pgjobs raises on purpose.

::

    PgJobsError
    ├── ConfigurationError          the app or a command is set up wrongly
    │   ├── MissingDatabaseURL      no DSN given and PGJOBS_DATABASE_URL unset
    │   └── UnsupportedConnection   a connection or session pgjobs cannot run on (not psycopg 3)
    ├── ValidationError             bad input, refused before any SQL is sent
    │   ├── InvalidName             queue or task name outside the allowed pattern
    │   ├── InvalidArgs             args not a JSON object of keyword arguments
    │   ├── ArgsTooLarge            encoded args larger than ``App(max_args_bytes=...)``
    │   └── InvalidOption           an option value out of range (priority, attempts, times)
    ├── SchemaNotReady              the pgjobs tables are missing or older than this code
    ├── DuplicateJob                a unique key is held, with ``on_duplicate="raise"``
    ├── BatchFinished               the batch is missing or has already succeeded
    ├── UnknownTask                 a name that no ``@app.job`` registered
    ├── LeaseLost                   a write about a job whose lease this attempt no longer holds
    ├── JobNotFound                 no job with that id (never enqueued, or pruned)
    ├── ScheduleNotFound            no periodic schedule of that name (also a LookupError)
    │   └── ScheduleDisabled        the schedule is disabled: no worker's code declares it
    └── ResultTimeout               a wait for a job's end ran out of time (also a TimeoutError)

    JobTimeout (an Exception)       a handler ran longer than its task's ``timeout``; recorded
                                    as that attempt's error like any handler exception

``ValidationError`` also derives from ``ValueError`` so that generic input handling keeps
working. Every message says what to do next. Two internal errors live here too, so that
every error type has one home: ``OutcomeRefused`` (recorded as a job's failure when the
database refuses its outcome) and ``WorkerStopped`` (stop requested before the worker got
going).
"""

from __future__ import annotations


class PgJobsError(Exception):
    """Base class of every error pgjobs raises on purpose."""


class ConfigurationError(PgJobsError):
    """The app, a task or a command is configured wrongly."""


class MissingDatabaseURL(ConfigurationError):
    """No database was named."""

    def __init__(self) -> None:
        super().__init__(
            "no database URL: pass App(dsn=...) or --dsn, or set PGJOBS_DATABASE_URL "
            "(for a local server run `pgjobs dev start` and use the URL it prints)"
        )


class UnsupportedConnection(ConfigurationError):
    """A connection, SQLAlchemy session or Django connection that pgjobs cannot run its
    statements on: another driver than psycopg 3, another database than PostgreSQL, or an
    object of an unknown kind."""


class ValidationError(PgJobsError, ValueError):
    """Input refused before any SQL was sent; nothing was written."""


class InvalidName(ValidationError):
    """A queue or task name outside the allowed pattern."""


class InvalidArgs(ValidationError):
    """Job arguments that are not a JSON object of keyword arguments."""


class ArgsTooLarge(ValidationError):
    """Encoded job arguments larger than the app's limit."""


class InvalidOption(ValidationError):
    """An enqueue or task option with a value out of range."""


class SchemaNotReady(PgJobsError):
    """The pgjobs schema is missing or not migrated to this version."""

    def __init__(self, schema: str, detail: str = "missing or out of date") -> None:
        super().__init__(
            f"the pgjobs tables in schema {schema!r} are {detail}: "
            "run `pgjobs migrate` (or apply the SQL from `pgjobs migrate --sql`)"
        )
        self.schema = schema


class DuplicateJob(PgJobsError):
    """A unique key is held by a live job and the enqueue asked to raise."""

    def __init__(self, task: str, key: str, holder_id: int) -> None:
        super().__init__(
            f"a {task} job with unique key {key!r} is already queued or running "
            f"(job {holder_id}); enqueue with on_duplicate='return' to get its id instead"
        )
        self.key = key
        self.holder_id = holder_id


class BatchFinished(PgJobsError):
    """The batch does not exist or has already succeeded, so it takes no more work."""


class UnknownTask(PgJobsError):
    """A task name that no ``@app.job`` registered in this process."""


class LeaseLost(PgJobsError):
    """This attempt no longer holds the job's lease; its write changed nothing.

    Raised by fenced writes such as ``current_job().complete(conn)``: another attempt
    owns the job now (or it was reclaimed), so the caller's transaction must roll back.
    """


class JobNotFound(PgJobsError, LookupError):
    """No job has this id: it was never enqueued (or not committed), or it was pruned."""

    def __init__(self, job_id: int) -> None:
        super().__init__(
            f"no job {job_id}: it was never enqueued, its transaction has not committed, "
            "or it finished and was pruned (retention_* settings)")
        self.job_id = job_id


class ScheduleNotFound(PgJobsError, LookupError):
    """No periodic schedule of this name in the ``periodic`` table."""

    def __init__(self, name: str, message: str | None = None) -> None:
        super().__init__(message or (
            f"no periodic schedule named {name!r}: workers write a schedule to the table when "
            "they start; `pgjobs periodic list` shows the names"))
        self.name = name


class ScheduleDisabled(ScheduleNotFound):
    """The schedule is disabled (no worker's code declares it any more), so no worker
    would run it."""

    def __init__(self, name: str) -> None:
        super().__init__(name, (
            f"periodic schedule {name!r} is disabled: no worker's code declares it any more, "
            "so no worker would enqueue its job; declare it again and restart the workers"))


class ResultTimeout(PgJobsError, TimeoutError):
    """``Enqueued.wait`` / ``App.wait`` ran out of time before the job ended."""

    def __init__(self, job_id: int, timeout: float, state: str) -> None:
        super().__init__(
            f"job {job_id} did not finish within {timeout:g}s (it is {state}); wait again, "
            f"or see why with `pgjobs jobs why {job_id}`")
        self.job_id = job_id
        self.timeout = timeout
        self.state = state


class JobTimeout(Exception):
    """A handler ran longer than its task's ``timeout``."""


class OutcomeRefused(Exception):
    """The database refused to store a job's outcome (recorded as that job's failure)."""


class WorkerStopped(Exception):
    """Stop was requested before the worker got going."""
