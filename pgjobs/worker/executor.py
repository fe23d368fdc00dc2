"""Running one claimed job: a short pipeline of named steps that ends in one Outcome.

    resolve_task -> invoke (async on the loop, sync on the thread pool, with timeout;
                            inside the app's execute middleware, when it has some)
                 -> classify (return value or exception -> Outcome)

The outcome is written by the completer (``db.leases.outcome_row`` maps it to a row).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..core.args import Undecodable, encode_result
from ..core.control import Cancel, Snooze
from ..core.errors import InvalidArgs, JobTimeout, LeaseLost, UnknownTask
from ..core.hooks import Hooks, acall_through, call_through
from ..core.names import did_you_mean
from ..core.outcomes import (
    CANCELLED,
    LEASE_LOST,
    RELEASED,
    SNOOZED,
    SUCCEEDED,
    UNKNOWN_TASK,
    Outcome,
    default_backoff,
    failure,
)
from ..core.types import ClaimedJob
from .context import JobContext, _current
from .host import Handler

log = logging.getLogger("pgjobs.worker")


def check_args(job: ClaimedJob) -> None:
    """Args the claim could not decode fail this job, with the reason."""
    if isinstance(job.args, Undecodable):
        raise InvalidArgs(
            f"job {job.id}'s args could not be decoded ({job.args.error}); fix or delete "
            "the row: pgjobs' enqueue refuses such args, so another producer wrote them"
        )


class Executor:
    """Runs claimed jobs of one app; sync handlers on a bounded thread pool."""

    def __init__(self, tasks: Mapping[str, Handler], threads: int,
                 hooks: Hooks | None = None, unknown_task_delay: float = 5.0) -> None:
        self.tasks = tasks
        self.hooks = hooks or Hooks()
        self.unknown_task_delay = unknown_task_delay
        """Seconds before a job of a task this worker lacks is due again, for another."""
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pgjobs-job")

    async def execute(self, job: ClaimedJob, ctx: JobContext) -> Outcome:
        try:
            task = self.resolve_task(job)
        except UnknownTask as exc:
            # A mixed deploy: the job goes back unrun for a worker that has its task, its
            # attempt refunded (the database ends it once none has for the grace).
            log.warning("%s", exc)
            return Outcome(UNKNOWN_TASK, delay=self.unknown_task_delay)
        try:
            check_args(job)
        except InvalidArgs as exc:
            # Not a handler's failure but a deploy's or a producer's mistake, which no
            # retry fixes by itself: say so louder than a routine retry (INFO).
            log.warning("%s", exc)
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

    def resolve_task(self, job: ClaimedJob) -> Handler:
        """Only registered tasks run: a name read from the database is never imported."""
        task = self.tasks.get(job.task)
        if task is None or task.fn is None:
            raise UnknownTask(
                f"job {job.id} (queue {job.queue!r}) names task {job.task!r}, which this "
                f"worker does not have registered{did_you_mean(job.task, self.tasks)}; it goes "
                "back, its attempt refunded, for a worker that has it (deploy the code that "
                "registers it; see --unknown-task-grace)"
            )
        return task

    async def invoke(self, task: Handler, job: ClaimedJob, ctx: JobContext) -> Any:
        token = _current.set(ctx)
        try:
            if not task.is_async:
                return await self.invoke_sync(task, job, ctx)
            chain = self.hooks.execute_async
            if task.timeout is None and not chain:
                return await handler(task)(**job.args)  # the common case, at no extra cost
            return await self.invoke_async(task, job, ctx, chain)
        finally:
            _current.reset(token)

    async def invoke_async(self, task: Handler, job: ClaimedJob, ctx: JobContext,
                           chain: list[Callable[..., Any]]) -> Any:
        """On the loop, inside the async execute middleware; the timeout covers both."""
        call = functools.partial(handler(task), **job.args)
        if task.timeout is None:
            return await acall_through(chain, call, ctx, "execute")
        limit = asyncio.timeout(task.timeout)
        try:
            async with limit:
                return await acall_through(chain, call, ctx, "execute")
        except TimeoutError:
            if limit.expired():
                raise JobTimeout(f"timed out after {task.timeout} s") from None
            raise  # the handler's own TimeoutError

    async def invoke_sync(self, task: Handler, job: ClaimedJob, ctx: JobContext) -> Any:
        """In a thread, inside the sync execute middleware (in that thread too)."""
        call = functools.partial(handler(task), **job.args)
        if self.hooks.execute:
            call = functools.partial(call_through, self.hooks.execute, call, ctx, "execute")
        future = asyncio.get_running_loop().run_in_executor(
            self.pool, contextvars.copy_context().run, call)
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

    @staticmethod
    def interrupted(job: ClaimedJob, ctx: JobContext) -> Outcome:
        if ctx.lease_lost:
            return Outcome(LEASE_LOST)
        return Outcome(RELEASED)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def handler(task: Handler) -> Callable[..., Any]:
    fn = task.fn
    assert fn is not None  # resolve_task refuses a task without one
    return fn


def elapsed_ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)
