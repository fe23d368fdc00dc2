"""pgjobs: a reliable job queue for Python that lives entirely in PostgreSQL.

    app = pgjobs.App()                      # PGJOBS_DATABASE_URL

    @app.job(queue="mail")
    def send_mail(user_id: int) -> None: ...

    with psycopg.connect(dsn) as conn:      # your transaction
        create_user(conn, ...)
        send_mail.enqueue(conn, user_id=1)  # commits or rolls back with it

The names below are the public API; the sub-packages are the implementation, in layers
that import one way only (docs/architecture.md): ``core`` (values, rules, errors) <-
``db`` (SQL and the functions that run it) <- ``client`` and ``worker``, side by side <-
``ops`` (command line, supervisor, migrations).
"""

from .client.app import App
from .client.batches import Batch
from .client.config import Config
from .client.task import Task
from .core.control import Cancel, Retry, Snooze
from .core.errors import (
    ArgsTooLarge,
    BatchFinished,
    ConfigurationError,
    DuplicateJob,
    InvalidArgs,
    InvalidName,
    InvalidOption,
    JobNotFound,
    JobTimeout,
    LeaseLost,
    MissingDatabaseURL,
    PgJobsError,
    ResultTimeout,
    ScheduleDisabled,
    ScheduleNotFound,
    SchemaNotReady,
    UnknownTask,
    UnsupportedConnection,
    ValidationError,
)
from .core.hooks import EnqueueCall, EventKind, JobEvent, Probe
from .core.options import JobOptions
from .core.types import BatchStatus, Enqueued, JobChange, JobResult
from .core.version import __version__
from .worker.config import WorkerConfig
from .worker.context import JobContext, current_job
from .worker.lifecycle import Worker

__all__ = [
    "App",
    "ArgsTooLarge",
    "Batch",
    "BatchFinished",
    "BatchStatus",
    "Cancel",
    "Config",
    "ConfigurationError",
    "DuplicateJob",
    "EnqueueCall",
    "Enqueued",
    "EventKind",
    "InvalidArgs",
    "InvalidName",
    "InvalidOption",
    "JobChange",
    "JobContext",
    "JobEvent",
    "JobNotFound",
    "JobOptions",
    "JobResult",
    "JobTimeout",
    "LeaseLost",
    "MissingDatabaseURL",
    "PgJobsError",
    "Probe",
    "ResultTimeout",
    "Retry",
    "ScheduleDisabled",
    "ScheduleNotFound",
    "SchemaNotReady",
    "Snooze",
    "Task",
    "UnknownTask",
    "UnsupportedConnection",
    "ValidationError",
    "Worker",
    "WorkerConfig",
    "__version__",
    "current_job",
]
