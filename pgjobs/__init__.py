"""pgjobs: a reliable job queue for Python that lives entirely in PostgreSQL.

    app = pgjobs.App()                      # PGJOBS_DATABASE_URL

    @app.job(queue="mail")
    def send_mail(user_id: int) -> None: ...

    with psycopg.connect(dsn) as conn:      # your transaction
        create_user(conn, ...)
        send_mail.enqueue(conn, user_id=1)  # commits or rolls back with it
"""

from ._admin import JobChange
from ._app import App, Config, Task
from ._batches import Batch, BatchStatus
from ._enqueue import Enqueued, JobOptions
from ._errors import (
    ArgsTooLarge,
    BatchFinished,
    ConfigurationError,
    DuplicateJob,
    InvalidArgs,
    InvalidName,
    InvalidOption,
    LeaseLost,
    MissingDatabaseURL,
    PgJobsError,
    SchemaNotReady,
    UnknownTask,
    ValidationError,
)
from ._executor import JobTimeout
from ._job import Cancel, JobContext, Retry, Snooze, current_job
from ._worker import Worker, WorkerConfig

__version__ = "0.1.0"

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
    "Enqueued",
    "InvalidArgs",
    "InvalidName",
    "InvalidOption",
    "JobChange",
    "JobContext",
    "JobOptions",
    "JobTimeout",
    "LeaseLost",
    "MissingDatabaseURL",
    "PgJobsError",
    "Retry",
    "SchemaNotReady",
    "Snooze",
    "Task",
    "UnknownTask",
    "ValidationError",
    "Worker",
    "WorkerConfig",
    "__version__",
    "current_job",
]
