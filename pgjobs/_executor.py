"""Running one claimed job: a short pipeline of named steps that ends in one Outcome.

    resolve_task -> invoke (async on the loop, sync on the thread pool, with timeout)
                 -> classify (return value or exception -> Outcome)

``outcome_row`` is the one place where an outcome becomes the values written to ``jobs``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import random
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._errors import InvalidArgs, LeaseLost, UnknownTask
from ._job import Cancel, ClaimedJob, JobContext, Retry, Snooze, Undecodable, _current

if TYPE_CHECKING:
    from ._app import App, Task

log = logging.getLogger("pgjobs.worker")

# Outcome kinds. Each maps to one row shape in outcome_row().
SUCCEEDED = "succeeded"
RETRY = "retry"  # failed (or asked to Retry) with attempts left: available at now + delay
DEAD = "dead"  # failed with attempts exhausted
SNOOZED = "snoozed"  # available at now + delay, attempt refunded
CANCELLED = "cancelled"
RELEASED = "released"  # interrupted by shutdown: available again in its place, refunded
LEASE_LOST = "lease_lost"  # another attempt owns the job: write nothing

MAX_MESSAGE = 2_000
MAX_TRACEBACK = 20_000


class JobTimeout(Exception):
    """A handler ran longer than its task's ``timeout``."""


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: str
    delay: float = 0.0
    error: dict[str, Any] | None = None
    result: str | None = None
    meta: dict[str, Any] | None = None


def default_backoff(attempt: int) -> float:
    """Seconds before retry ``attempt + 1``: polynomial growth with jitter, as Sidekiq
    (about 16 s, 31 s, 96 s, 271 s, ... ; 25 attempts span about three weeks)."""
    return float(attempt**4 + 15 + random.uniform(0, 10) * attempt)


def type_name(kind: type[BaseException]) -> str:
    """``ValueError``, ``myapp.errors.Gone``; pgjobs' own as ``pgjobs.Retry`` (public)."""
    module = kind.__module__
    if module == "builtins":
        return kind.__qualname__
    if module.startswith("pgjobs._"):
        module = "pgjobs"
    return f"{module}.{kind.__qualname__}"


def _text(value: str) -> str:
    # jsonb cannot store NUL; an error message or traceback may contain one.
    return value.replace("\x00", "\\x00")


def error_entry(attempt: int, exc: BaseException) -> dict[str, Any]:
    text = "".join(traceback.format_exception(exc))
    return {
        "attempt": attempt,
        "type": type_name(type(exc)),
        "message": _text(str(exc)[:MAX_MESSAGE]),
        "traceback": _text(text[-MAX_TRACEBACK:]),
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


def check_args(job: ClaimedJob) -> None:
    """Args the claim could not decode fail this job, with the reason."""
    if isinstance(job.args, Undecodable):
        raise InvalidArgs(
            f"job {job.id}'s args could not be decoded ({job.args.error}); fix or delete "
            "the row: pgjobs' enqueue refuses such args, so another producer wrote them"
        )


def encode_result(value: Any) -> str | None:
    """The JSON stored in ``result``; what JSON or jsonb cannot hold is kept as a repr."""
    if value is None:
        return None
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        text.encode("utf-8")
    except (TypeError, ValueError, RecursionError):
        text = ""
    if not text or "\\u0000" in text:
        return json.dumps({"unserialisable_result": _text(repr(value)[:MAX_MESSAGE])})
    return text


# (state, delay seconds, attempt refund, error, result JSON text, meta) or None for
# "write nothing".
Row = tuple[str, float | None, int, dict[str, Any] | None, str | None, dict[str, Any] | None]


def outcome_row(outcome: Outcome) -> Row | None:
    """The one mapping from an outcome to the values ``job_complete_many`` writes."""
    kind = outcome.kind
    error, meta, delay = outcome.error, outcome.meta, outcome.delay
    if kind == SUCCEEDED:
        return ("succeeded", delay, 0, None, outcome.result, None)
    if kind == RETRY:
        return ("available", delay, 0, error, None, None)
    if kind == DEAD:
        return ("dead", delay, 0, error, None, None)
    if kind == SNOOZED:
        return ("available", delay, 1, None, None, meta)
    if kind == CANCELLED:
        return ("cancelled", delay, 0, None, None, meta)
    if kind == RELEASED:  # no delay: it keeps its run_at, its place in line
        return ("available", None, 1, None, None, None)
    if kind == LEASE_LOST:
        return None
    raise AssertionError(f"unknown outcome {kind!r}")


def outcomes_param(writes: list[tuple[int, Any, Row]]) -> dict[str, str]:
    """``job_complete_many``'s parameter for (job id, lease token, row) triples."""
    document = [[job_id, str(token), *row] for job_id, token, row in writes]
    # ensure_ascii: a lone surrogate or NUL becomes a JSON escape that the database
    # refuses (a psycopg.Error, which the completer handles row by row), never an encoding
    # error in the driver.
    return {"outcomes": json.dumps(document, separators=(",", ":"))}


class Executor:
    """Runs claimed jobs of one app; sync handlers on a bounded thread pool."""

    def __init__(self, app: App, threads: int) -> None:
        self.app = app
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pgjobs-job")

    async def execute(self, job: ClaimedJob, ctx: JobContext) -> Outcome:
        try:
            task = self.resolve_task(job)
            check_args(job)
        except (UnknownTask, InvalidArgs) as exc:
            return failure(job, exc, default_backoff)
        backoff = task.retry_backoff or default_backoff
        try:
            value = await self.invoke(task, job, ctx)
        except asyncio.CancelledError:
            return self.interrupted(job, ctx)
        except LeaseLost:
            return Outcome(LEASE_LOST)
        except Snooze as exc:
            return Outcome(SNOOZED, delay=exc.delay, meta={"snoozed": exc.reason or True})
        except Cancel as exc:
            return Outcome(CANCELLED, meta={"cancel_reason": exc.reason})
        except BaseException as exc:
            # Every handler error is a failure, SystemExit and KeyboardInterrupt included:
            # they must not take the worker down (its own signals are handled elsewhere).
            if ctx.lease_lost:
                return Outcome(LEASE_LOST)
            return failure(job, exc, backoff)
        if ctx.lease_lost:
            return Outcome(LEASE_LOST)
        return Outcome(SUCCEEDED, result=encode_result(value))

    def resolve_task(self, job: ClaimedJob) -> Task[..., Any]:
        """Only registered tasks run: a name read from the database is never imported."""
        task = self.app.tasks.get(job.task)
        if task is None or task.fn is None:
            raise UnknownTask(
                f"job {job.id} names task {job.task!r}, which this worker does not have "
                "registered; deploy the code that registers it (jobs are retried meanwhile)"
            )
        return task

    async def invoke(self, task: Task[..., Any], job: ClaimedJob, ctx: JobContext) -> Any:
        token = _current.set(ctx)
        try:
            fn = task.fn
            assert fn is not None
            if task.is_async:
                if task.timeout is None:
                    return await fn(**job.args)
                limit = asyncio.timeout(task.timeout)
                try:
                    async with limit:
                        return await fn(**job.args)
                except TimeoutError:
                    if limit.expired():
                        raise JobTimeout(f"timed out after {task.timeout} s") from None
                    raise  # the handler's own TimeoutError
            call = functools.partial(contextvars.copy_context().run, fn, **job.args)
            future = asyncio.get_running_loop().run_in_executor(self.pool, call)
            if task.timeout is None:
                return await asyncio.shield(future)
            try:
                return await asyncio.wait_for(asyncio.shield(future), task.timeout)
            except TimeoutError:
                # A thread cannot be killed: ask it to stop, keep its slot until it
                # returns, and record the timeout whatever it returns.
                ctx.stop_event.set()
                await asyncio.shield(future)
                raise JobTimeout(
                    f"timed out after {task.timeout} s (sync handler ran to completion)"
                ) from None
        finally:
            _current.reset(token)

    @staticmethod
    def interrupted(job: ClaimedJob, ctx: JobContext) -> Outcome:
        if ctx.lease_lost:
            return Outcome(LEASE_LOST)
        return Outcome(RELEASED)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def elapsed_ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)
