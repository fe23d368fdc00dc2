"""Operator actions on jobs by id: cancel and retry (``App.cancel_jobs``,
``App.retry_jobs`` and ``pgjobs jobs cancel|retry``).

Each action is one statement that changes what it may and reports, per id asked, what
happened and why not, so a batch of ids is never half understood.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._db import tuples
from ._enqueue import translated_errors
from ._errors import InvalidOption

if TYPE_CHECKING:
    from ._app import AnyConnection, App

FINISHED = ("succeeded", "dead", "cancelled", "expired")


@dataclass(frozen=True, slots=True)
class JobChange:
    """What an operator action did to one job."""

    id: int
    changed: bool
    was: str | None
    """The job's state before (None: no such job, or pruned)."""
    state: str | None
    """Its state now."""
    detail: str
    """In words: what happened, or why nothing did."""


def job_ids(ids: Iterable[int]) -> list[int]:
    checked = sorted(set(ids))
    if not checked:
        raise InvalidOption("name at least one job id")
    for job_id in checked:
        if type(job_id) is not int or job_id < 1:
            raise InvalidOption(f"job ids are positive integers, not {job_id!r}")
    return checked


def cancel_jobs(app: App, conn: AnyConnection, ids: Iterable[int],
                reason: str | None) -> list[JobChange]:
    with translated_errors(app.config.schema):
        rows = tuples(conn).execute(app.queries.job_cancel,
                                    {"ids": job_ids(ids), "reason": reason}).fetchall()
    return [_cancelled(*row) for row in rows]


def _cancelled(job_id: int, changed: bool, was: str | None, state: str | None) -> JobChange:
    if changed:
        detail = ("cancelled; its worker stops the handler at its next heartbeat"
                  if was == "running" else "cancelled")
    elif state is None:
        detail = "no such job (never enqueued, or pruned after it finished)"
    else:
        detail = f"not cancelled: it has already finished ({state})"
    return JobChange(job_id, changed, was, state, detail)


def retry_jobs(app: App, conn: AnyConnection, ids: Iterable[int]) -> list[JobChange]:
    channel = app.config.channel
    with translated_errors(app.config.schema):
        rows = tuples(conn).execute(app.queries.job_retry,
                                    {"ids": job_ids(ids), "channel": channel}).fetchall()
    return [_retried(*row) for row in rows]


def _retried(job_id: int, changed: bool, was: str | None, state: str | None,
             key_holder: int | None, batch_succeeded: bool | None) -> JobChange:
    if changed:
        detail = "runs now" if was == "available" else f"retried (was {was})"
    elif state is None:
        detail = "no such job (never enqueued, or pruned after it finished)"
    elif state in ("running", "succeeded") or (state == "available" and not key_holder):
        detail = f"not retried: it is {state}"
    elif batch_succeeded:
        detail = "not retried: its batch has succeeded and its callbacks have run"
    elif key_holder is not None:
        detail = f"not retried: job {key_holder} holds its unique key"
    else:
        detail = f"not retried: it is {state}"
    return JobChange(job_id, changed, was, state, detail)


def run(app: App, conn: AnyConnection | None,
        action: Callable[..., list[JobChange]], *args: Any) -> list[JobChange]:
    """``action`` in ``conn``'s transaction, or (None) in one of its own on the app's pool."""
    if conn is not None:
        return action(app, conn, *args)
    with app.pool.connection() as own, own.transaction():
        return action(app, own, *args)
