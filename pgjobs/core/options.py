"""Job options: a task's enqueue defaults (``@app.job(...)``), overridable per enqueue
(``task.options(...)``). Checked when built, so an out-of-range value is refused before
any SQL is sent (``InvalidOption``)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from typing import Any

from .errors import InvalidOption
from .names import check_queue

PRIORITY_RANGE = range(-32768, 32768)  # smallint
MAX_ATTEMPTS_LIMIT = 2**31 - 1  # integer


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


def unique_key(task: str, opts: JobOptions, kwargs: Mapping[str, Any]) -> str | None:
    """The job's unique key: the explicit one, or task + queue + canonical args."""
    if opts.unique_key is not None:
        return opts.unique_key
    if opts.unique_for is None:
        return None
    canonical = json.dumps(kwargs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:40]
    return f"{task}:{opts.queue}:{digest}"
