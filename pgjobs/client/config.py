"""An App's settings: one frozen dataclass, every field also an ``App(...)`` keyword."""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..core.errors import InvalidOption
from ..core.names import channel_for, check_schema, done_channel_for


@dataclass(frozen=True, slots=True)
class Config:
    """Settings of an :class:`App`; every field is also an ``App(...)`` keyword."""

    dsn: str | None = None
    """libpq URL or key=value string. None: ``PGJOBS_DATABASE_URL`` at first use."""
    schema: str = "pgjobs"
    """Schema holding pgjobs' tables (``PGJOBS_SCHEMA`` for the CLI)."""
    max_args_bytes: int | None = 1_048_576
    """Largest encoded args accepted by enqueue, in bytes. None: no limit."""
    pool_size: int = 4
    """Connections in the app's own pool, used by enqueue calls made without a connection."""
    pool_timeout: float = 5.0
    """Seconds an enqueue without a connection waits for a pool connection per try."""
    push_retries: int = 5
    """Retries of an enqueue made without a connection when the connection fails
    (backoff 0.1 s doubling to 3 s). A receipt makes each retry safe: no duplicate jobs."""
    prepare: bool = True
    """Prepare statements on pgjobs' own connections. Turn off behind PgBouncer < 1.21 in
    transaction mode. Connections you pass in keep their own ``prepare_threshold``."""
    pgbouncer: bool = False
    """The DSN goes through a transaction-mode pooler such as PgBouncer
    (docs/pgbouncer.md): pgjobs' own connections prepare nothing and hold no session
    state, and workers LISTEN only on the listen DSN (without one they poll)."""
    listen_dsn: str | None = None
    """A direct connection to PostgreSQL for workers' LISTEN (a pooler in transaction
    mode cannot hold one). Default (None): PGJOBS_LISTEN_DSN at first use, else the DSN
    unless pgbouncer is set."""

    notify: bool = True
    """NOTIFY workers when an enqueue commits, so an idle worker starts the job at once.
    PostgreSQL serialises notifying commits (a cluster-wide lock held through each one's
    WAL flush), so with many concurrent enqueuers False can raise their throughput; workers
    then find jobs by polling (``--poll-interval``)."""

    strict_names: bool = True
    """Enqueue by name (``app.enqueue(conn, "name")``, ``app.task("name")``) refuses a name
    that no ``@app.job`` of this App registered, with :class:`pgjobs.UnknownTask` naming
    the close matches, as long as the App has registered tasks (one with none is a pure
    producer and may name any task). False: a producer that registers some tasks but does
    not import the workers' code enqueues any valid name, unchecked."""

    periodic_owner: str = "default"
    """Who owns this App's periodic schedules (``periodic.owner``): a worker's sync
    disables the schedules of its owner that its code no longer declares, and leaves
    other owners' alone. Give each codebase that declares schedules in a shared schema a
    name of its own (``App(periodic_owner="billing")``); codebases with the same owner
    disable each other's schedules (docs/periodic.md)."""

    def __post_init__(self) -> None:
        check_schema(self.schema)
        owner = self.periodic_owner
        if not isinstance(owner, str) or not 1 <= len(owner) <= 200 or not owner.strip():
            raise InvalidOption(f"periodic_owner must be a non-blank string of at most 200 "
                                f"characters, not {owner!r}")
        if self.max_args_bytes is not None and self.max_args_bytes < 2:
            raise InvalidOption("max_args_bytes must be at least 2, or None for no limit")
        if self.pool_size < 1:
            raise InvalidOption("pool_size must be at least 1")
        if self.push_retries < 0:
            raise InvalidOption("push_retries cannot be negative")
        if self.pool_timeout <= 0:
            raise InvalidOption("pool_timeout must be positive")

    @property
    def prepare_threshold(self) -> int | None:
        """psycopg's ``prepare_threshold`` for pgjobs' own connections (None: never)."""
        return 0 if self.prepare and not self.pgbouncer else None

    @property
    def channel(self) -> str:
        """The LISTEN/NOTIFY channel that wakes this schema's workers."""
        return channel_for(self.schema)

    @property
    def done_channel(self) -> str:
        """The channel announcing the ids of jobs that reached a terminal state."""
        return done_channel_for(self.schema)


SETTING_NAMES = frozenset(f.name for f in fields(Config)) - {"dsn", "schema"}
