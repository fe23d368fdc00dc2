"""pgjobs: a reliable job queue for Python that lives entirely in PostgreSQL.

    app = pgjobs.App()                      # PGJOBS_DATABASE_URL

    @app.job(queue="mail")
    def send_mail(user_id: int) -> None: ...

    with psycopg.connect(dsn) as conn:      # your transaction
        create_user(conn, ...)
        send_mail.enqueue(conn, user_id=1)  # commits or rolls back with it
"""

from ._app import App, Config, Task
from ._enqueue import Enqueued, JobOptions
from ._errors import (
    ArgsTooLarge,
    ConfigurationError,
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

__version__ = "0.1.0"

__all__ = [
    "App",
    "ArgsTooLarge",
    "Config",
    "ConfigurationError",
    "Enqueued",
    "InvalidArgs",
    "InvalidName",
    "InvalidOption",
    "JobOptions",
    "LeaseLost",
    "MissingDatabaseURL",
    "PgJobsError",
    "SchemaNotReady",
    "Task",
    "UnknownTask",
    "ValidationError",
    "__version__",
]
