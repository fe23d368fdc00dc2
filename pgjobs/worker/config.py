"""A worker's settings: one frozen dataclass. Each field's docstring is its documentation
and the help of its ``pgjobs worker`` flag; the flags and their ``PGJOBS_*`` environment
twins are generated from these fields (``ops.settings``), so a default is written once."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from ..core.errors import InvalidOption
from ..core.names import check_queue


@dataclass(frozen=True, slots=True)
class Retention:
    """How long finished jobs and dead worker rows are kept, in seconds (None: forever)."""

    succeeded: float | None = 86_400.0
    cancelled: float | None = 86_400.0
    dead: float | None = 7 * 86_400.0
    """Dead and expired jobs."""
    workers: float | None = 86_400.0
    periodic_ticks: float | None = 7 * 86_400.0
    """Rows of the periodic ledger (``periodic_ticks``)."""

    def longest(self) -> float | None:
        """The longest finite job retention (None: every job state is kept forever). A
        batch row outlives it; one whose jobs are kept forever stays with them."""
        periods = [p for p in (self.succeeded, self.cancelled, self.dead) if p is not None]
        return max(periods) if periods else None


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Settings of one worker process (``pgjobs worker`` flags and ``PGJOBS_*`` twins)."""

    queues: tuple[str, ...] | None = None
    """Queues to claim from (a comma-separated string is split). Default (None): every
    queue of the app's registered tasks and periodic schedules, plus default. A worker
    enqueues the periodic ticks of these queues only."""
    concurrency: int = 10
    """Jobs run at once by this process (async ones on the loop, sync ones in threads)."""
    lease: float = 30.0
    """Seconds a claim holds a job without a heartbeat; renewed every lease/3. A job
    whose worker vanished is reclaimed this long after its last renewal."""
    shutdown_timeout: float = 25.0
    """Seconds running jobs get to finish after SIGTERM before they are interrupted
    and released (their attempt refunded). Keep it below your orchestrator's grace."""
    poll_interval: float = 1.0
    """Seconds between claim polls when no notification arrives (jobs due later,
    retries, lost notifications, or no LISTEN)."""
    burst: bool = False
    """Exit once no due job is left (and nothing is running)."""
    recovery_budget: int = 3
    """Times a job may be recovered after a lost worker before it is dead."""
    isolate_suspects: bool = True
    """Run each recovered job (a suspect: it may be what killed a worker) in a new
    process of its own, any number at once, so that a poison job kills only its own
    process and the innocent jobs of the same crash run at once. Needs --app (the child
    imports it); without it, or off, a worker runs one suspect at a time, in-process."""
    listen: bool = True
    """LISTEN for new jobs, on the app's listen DSN (a direct connection when the DSN
    goes through PgBouncer; with pgbouncer set and no listen DSN the worker polls).
    Off: polling alone finds jobs."""
    reclaim_interval: float | None = None
    """Seconds between reclaims of jobs whose worker was lost. Default (None): half the
    lease, at most 10."""
    prefetch: int = 100
    """Most jobs claimed ahead of free slots, leased and held until a slot frees; used
    only while jobs finish faster than a claim round trip, so long jobs are never held
    back from other workers. 0: claim only for free slots."""
    summary_interval: float = 60.0
    """Seconds between INFO summary lines (outcome counts and rate since the last one),
    written only when jobs finished. Each success is a DEBUG line; retries are INFO and
    deaths WARNING. 0: no summary."""
    unknown_task_grace: float | timedelta | None = 3_600.0
    """How long a job of a task this worker does not have waits for one that has it (a
    mixed deploy: new producers or new workers before the rest), counted from when a
    live worker last knew the task (the ``tasks`` registry) or, if later, from the job's
    enqueue. Meanwhile such a job goes back unrun, its attempt refunded, for another
    worker; once no live worker has known the task for this long it is dead, with an
    error that says so (seconds or a timedelta; on the command line 90s, 15m, 12h or
    7d); never (None): it waits forever."""
    retention_succeeded: float | timedelta | None = 86_400.0
    """How long succeeded jobs are kept after they finish (seconds or a timedelta; on the
    command line 90s, 15m, 12h or 7d); never (None) keeps them forever. Jobs of a batch
    are kept until the batch has been complete this long."""
    retention_cancelled: float | timedelta | None = 86_400.0
    """How long cancelled jobs are kept; never (None): forever."""
    retention_dead: float | timedelta | None = 7 * 86_400.0
    """How long dead and expired jobs are kept (time to look and retry); never (None):
    forever."""
    retention_workers: float | timedelta | None = 86_400.0
    """How long a workers row is kept after its last heartbeat (stopped workers, and ones
    that died without saying so); never (None): forever. At least three leases."""
    retention_periodic_ticks: float | timedelta | None = 7 * 86_400.0
    """How long the periodic ledger's rows (``periodic_ticks``: what each cron tick
    became) are kept after they were recorded; never (None): forever. A schedule ticking
    every second adds 86,400 rows a day: shorten it for fast schedules."""

    def __post_init__(self) -> None:
        if isinstance(self.queues, str):  # "mail" or "mail,sms", not the letters m, a, ...
            queues = tuple(q.strip() for q in self.queues.split(",") if q.strip())
            object.__setattr__(self, "queues", queues)
        if self.queues is not None:
            if not self.queues:
                raise InvalidOption("queues must name at least one queue")
            for queue in self.queues:
                check_queue(queue)
        for name in ("concurrency", "recovery_budget", "prefetch"):
            value = getattr(self, name)
            if type(value) is not int or value < (1 if name == "concurrency" else 0):
                least = 1 if name == "concurrency" else 0
                raise InvalidOption(f"{name} must be an int >= {least}, not {value!r}")
        if self.lease < 1:
            raise InvalidOption("lease must be at least 1 second")
        for name in ("shutdown_timeout", "poll_interval", "summary_interval"):
            if getattr(self, name) < 0:
                raise InvalidOption(f"{name} cannot be negative")
        for name in ("unknown_task_grace", "retention_succeeded", "retention_cancelled",
                     "retention_dead", "retention_workers", "retention_periodic_ticks"):
            if isinstance(getattr(self, name), timedelta):
                object.__setattr__(self, name, getattr(self, name).total_seconds())
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(
                    value, int | float) or not value > 0):
                raise InvalidOption(
                    f"{name} must be a positive number of seconds (or a timedelta), or None "
                    f"for never, not {value!r}")
        workers = self.retention_workers
        if workers is not None and not _seconds(workers) >= 3 * self.lease:
            raise InvalidOption(
                f"retention_workers must be at least three leases ({3 * self.lease:g}s), so "
                f"a live worker's row is never deleted, or None; not {self.retention_workers!r}")

    @property
    def unknown_task_grace_seconds(self) -> float | None:
        """``unknown_task_grace`` in seconds (None: never)."""
        grace = self.unknown_task_grace
        return None if grace is None else float(_seconds(grace))

    @property
    def retention(self) -> Retention:
        """The retention periods in seconds (``__post_init__`` turned timedeltas into
        seconds)."""
        periods = (self.retention_succeeded, self.retention_cancelled, self.retention_dead,
                   self.retention_workers, self.retention_periodic_ticks)
        return Retention(*(None if p is None else float(_seconds(p)) for p in periods))


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else value

