"""The outcome of one attempt: the single value the executor's pipeline yields and the
completer writes (``db.completions`` turns each kind into the values of one row).

    succeeded  the handler returned
    retry      it failed (or raised Retry) with attempts left: available again after a delay
    dead       it failed with its attempts exhausted
    snoozed    it raised Snooze: available again after a delay, the attempt refunded
    cancelled  it raised Cancel
    released   interrupted by shutdown: available again in its place, the attempt refunded
    lease_lost another attempt owns the job: nothing is written
    unknown_task  this worker does not have the job's task (a mixed deploy): available
               again after a short delay for a worker that has it, the attempt refunded;
               dead once no live worker has known the task for the worker's
               ``unknown_task_grace`` (the database decides, from the ``tasks``
               registry and ``workers``: db.sql.leases.job_complete_many)
    crashed    its isolated process died (a suspect, see worker/isolated.py): a recovery,
               as if its worker had been lost: available again in its place, the attempt
               refunded, ``recoveries`` + 1; ``dead`` instead past the recovery budget
"""

from __future__ import annotations

import logging
import random
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .args import MAX_MESSAGE, text
from .control import Retry
from .types import ClaimedJob

log = logging.getLogger("pgjobs.worker")

SUCCEEDED = "succeeded"
RETRY = "retry"
DEAD = "dead"
SNOOZED = "snoozed"
CANCELLED = "cancelled"
RELEASED = "released"
LEASE_LOST = "lease_lost"
CRASHED = "crashed"
UNKNOWN_TASK = "unknown_task"

MAX_TRACEBACK = 20_000
"""Longest traceback kept per error, in characters (the end of it)."""

# Modules whose errors are recorded under the public ``pgjobs.`` prefix (``pgjobs.Retry``,
# ``pgjobs.JobTimeout``): where they are defined inside the package is not public.
_INTERNAL = ("pgjobs.core", "pgjobs.db", "pgjobs.client", "pgjobs.worker", "pgjobs.ops")


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: str
    delay: float = 0.0
    error: dict[str, Any] | None = None
    result: str | None = None
    meta: dict[str, Any] | None = None
    dead: bool = False
    """For ``crashed``: the recovery budget is spent, the job is dead."""


def default_backoff(attempt: int) -> float:
    """Seconds before retry ``attempt + 1``: polynomial growth with jitter, as Sidekiq
    (about 16 s, 31 s, 96 s, 271 s, ... ; 25 attempts span about three weeks)."""
    return float(attempt**4 + 15 + random.uniform(0, 10) * attempt)


def type_name(kind: type[BaseException]) -> str:
    """``ValueError``, ``myapp.errors.Gone``; pgjobs' own as ``pgjobs.Retry`` (public)."""
    module = kind.__module__
    if module == "builtins":
        return kind.__qualname__
    if module.startswith(_INTERNAL):
        module = "pgjobs"
    return f"{module}.{kind.__qualname__}"


def error_entry(attempt: int, exc: BaseException) -> dict[str, Any]:
    """One entry of ``jobs.errors`` for ``exc`` (the database adds the time)."""
    formatted = "".join(traceback.format_exception(exc))
    return {
        "attempt": attempt,
        "type": type_name(type(exc)),
        "message": text(str(exc)[:MAX_MESSAGE]),
        "traceback": text(formatted[-MAX_TRACEBACK:]),
    }


def failure(job: ClaimedJob, exc: BaseException, backoff: Callable[[int], float]) -> Outcome:
    """A failed attempt: retry after backoff while attempts remain, else dead."""
    entry = error_entry(job.attempt, exc)
    if job.attempt >= job.max_attempts:
        return Outcome(DEAD, error=entry)
    if isinstance(exc, Retry) and exc.delay is not None:
        delay = exc.delay
    else:
        try:
            delay = float(backoff(job.attempt))
        except Exception as backoff_error:
            log.error("retry_backoff of %s failed (%r); using the default", job.task,
                      backoff_error)
            delay = default_backoff(job.attempt)
    return Outcome(RETRY, delay=max(0.0, delay), error=entry)


def crashed(job: ClaimedJob, budget: int, how: str) -> Outcome:
    """The process running ``job`` alone died (``how``: "killed by SIGKILL", "exit
    status 3"): counted as a recovery, like a lost worker's job, and ``dead`` once the
    job has been recovered ``budget`` times already. Its error reads like the reclaim's."""
    dead = job.recoveries >= budget
    message = (f"worker lost: the process running it alone {how}; "
               + (f"recovery budget of {budget} exhausted, job is dead" if dead
                  else "job recovered"))
    error = {"attempt": job.attempt, "type": "pgjobs.WorkerLost", "message": message,
             "traceback": None}
    return Outcome(CRASHED, error=error, dead=dead)
