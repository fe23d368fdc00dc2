"""Per-key limits of a task: ``@app.job(concurrency_key=..., concurrency_limit=...,
rate_limit=..., rate_period=...)``.

The key is computed at enqueue from the job's keyword arguments and stored on the job
(``jobs.concurrency_key``) together with the limits, so the claim can enforce them without
the task's code. Queue-wide limits live in the ``queues`` table instead (docs/queues.md).
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .errors import InvalidArgs, InvalidOption

MAX_KEY_LENGTH = 1000
OPTION_NAMES = ("concurrency_key", "concurrency_limit", "rate_limit", "rate_period")

NO_KEY_LIMIT: Mapping[str, Any] = {
    "concurrency_key": None, "concurrency_limit": None, "rate_limit": None, "rate_period": None,
}
"""The jobs columns of a job without a per-key limit."""

KeySource = str | Callable[..., Any]


@dataclass(frozen=True, slots=True)
class KeyLimit:
    """At most ``concurrency_limit`` running jobs and ``rate_limit`` starts per
    ``rate_period`` for each value of ``key``, across all workers."""

    key: KeySource
    """A format string over the job's arguments (``"customer:{customer_id}"``), or a
    callable taking them as keyword arguments and returning the key (None: this job has no
    key and no limit). Keys are global: tasks that compute the same key share its limit."""
    concurrency_limit: int | None = None
    rate_limit: int | None = None
    rate_period: timedelta | None = None

    @classmethod
    def pop_options(cls, task: str, options: dict[str, Any]) -> KeyLimit | None:
        """Take the limit options out of ``@app.job(...)``'s options (None: no limit)."""
        key, limit, rate, period = (options.pop(name, None) for name in OPTION_NAMES)
        if key is None and limit is None and rate is None and period is None:
            return None
        if limit is None and rate is None:
            raise InvalidOption(
                f"{task}: concurrency_key needs concurrency_limit=N and/or rate_limit=N "
                "with rate_period=timedelta(...)"
            )
        for name, value in (("concurrency_limit", limit), ("rate_limit", rate)):
            if value is not None and (type(value) is not int or value < 1):
                raise InvalidOption(f"{task}: {name} must be an int >= 1, not {value!r}")
        if (rate is None) != (period is None):
            raise InvalidOption(
                f"{task}: give rate_limit and rate_period together "
                "(for example rate_limit=10, rate_period=timedelta(seconds=1))"
            )
        if isinstance(period, int | float) and not isinstance(period, bool):
            period = timedelta(seconds=period)
        if period is not None and (not isinstance(period, timedelta) or period <= timedelta(0)):
            raise InvalidOption(f"{task}: rate_period must be a positive timedelta, not {period!r}")
        if key is None:
            key = task  # a task-wide limit
        if not (isinstance(key, str) and key) and not callable(key):
            raise InvalidOption(
                f"{task}: concurrency_key must be a non-empty format string such as "
                "'customer:{customer_id}' or a callable of the job's arguments"
            )
        return cls(key, limit, rate, period)

    def columns(self, task: str, kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
        """The ``jobs`` columns for one job with arguments ``kwargs``."""
        key = self._key(task, kwargs)
        if key is None:
            return NO_KEY_LIMIT
        return {
            "concurrency_key": key,
            "concurrency_limit": self.concurrency_limit,
            "rate_limit": self.rate_limit,
            "rate_period": self.rate_period,
        }

    def shared_columns(self) -> Mapping[str, Any]:
        """The limit columns every job of the task shares (the key aside, which is per job:
        a job whose key is None has no limit at all)."""
        return {"concurrency_key": None, "concurrency_limit": self.concurrency_limit,
                "rate_limit": self.rate_limit, "rate_period": self.rate_period}

    def sql_parts(self) -> list[str] | None:
        """The key as the ``tasks`` registry stores it for ``pgjobs.enqueue()`` in SQL:
        literal text and argument names, alternating, literal first and last
        (``["customer:", "customer_id", ""]``). None when SQL cannot compute the key as
        Python does: a callable, or a field with an index, an attribute, a conversion or a
        format spec."""
        if callable(self.key):
            return None
        parts: list[str] = []
        literal = ""
        try:
            for text, name, spec, conversion in string.Formatter().parse(self.key):
                literal += text
                if name is None:
                    continue
                if not name.isidentifier() or spec or conversion:
                    return None
                parts += [literal, name]
                literal = ""
        except ValueError:  # unbalanced braces: Python refuses it at enqueue too
            return None
        return [*parts, literal]

    def _key(self, task: str, kwargs: Mapping[str, Any]) -> str | None:
        if callable(self.key):
            value = self.key(**kwargs)
            if value is None:
                return None
            if not isinstance(value, str):
                raise InvalidArgs(
                    f"{task}: the concurrency_key callable returned {value!r}; return a str "
                    "(or None for no limit)"
                )
        else:
            try:
                value = self.key.format_map(kwargs)
            except (KeyError, IndexError, AttributeError, ValueError) as exc:
                raise InvalidArgs(
                    f"{task}: concurrency_key {self.key!r} cannot be formatted from the job's "
                    f"arguments ({type(exc).__name__}: {exc}); name keyword arguments the "
                    "task takes, as in 'customer:{customer_id}'"
                ) from None
        if not 1 <= len(value) <= MAX_KEY_LENGTH or "\x00" in value:
            raise InvalidArgs(
                f"{task}: concurrency key must be 1-{MAX_KEY_LENGTH} characters without NUL, "
                f"got {len(value)} characters"
            )
        return value
