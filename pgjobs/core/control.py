"""What a handler raises to decide its job's fate: ``Retry``, ``Snooze`` and ``Cancel``."""

from __future__ import annotations

from datetime import timedelta


def _seconds(value: timedelta | float | int | None) -> float:
    if value is None:
        return 0.0
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 0:
        raise ValueError("a delay cannot be negative")
    return seconds


class Retry(Exception):
    """Raise in a handler to retry later; the attempt counts toward ``max_attempts``."""

    def __init__(self, in_: timedelta | float | None = None, reason: str = "") -> None:
        super().__init__(reason or "retry requested")
        # None: the task's backoff decides; 0 retries at once.
        self.delay: float | None = None if in_ is None else _seconds(in_)
        self.reason = reason


class Snooze(Exception):
    """Raise in a handler to run again after ``in_`` without counting an attempt."""

    def __init__(self, in_: timedelta | float, reason: str = "") -> None:
        super().__init__(reason or "snoozed")
        self.delay = _seconds(in_)
        self.reason = reason


class Cancel(Exception):
    """Raise in a handler to end the job as ``cancelled`` (no retry)."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason or "cancelled")
        self.reason = reason
