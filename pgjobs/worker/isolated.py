"""Suspects in processes of their own: a job recovered after a lost worker may be what
killed it, so the worker runs it in a new Python process that runs only that job.

A poison job then kills only its own process. The worker sees that process die, and
records a recovery at once (outcome ``crashed``: refunded, ``recoveries`` + 1, ``dead``
past the recovery budget), without losing its other jobs or waiting out a lease. The
innocent jobs that shared the first crash run side by side, each in its own process,
and succeed as soon as they have run; the claim gives an isolating worker any number of
suspects (``db.sql.claim``).

The parent keeps the job's lease (its heartbeat) and writes the outcome, as for any job.
The child runs the executor's pipeline for the job (``worker.isolated_child``) and sends
the outcome back through a pipe. Children are forked by multiprocessing's fork server,
started once with the app's module imported (``--app``): a clean process with nothing of
the worker's (no connections, no threads), started in milliseconds. What the handler
reports (``progress``, ``checkpoint``) comes through the pipe too, twice a second at
most, so the worker's heartbeat writes it as for any job. A lost lease or a shutdown
kills the child.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable
from dataclasses import fields
from multiprocessing.connection import Connection
from typing import Any

from ..core.args import Undecodable
from ..core.outcomes import Outcome, crashed
from ..core.types import ClaimedJob
from .context import JobContext
from .isolated_child import main as _child_main

log = logging.getLogger("pgjobs.worker")

_OUTCOME_FIELDS = frozenset(f.name for f in fields(Outcome))


def isolable(job: ClaimedJob) -> bool:
    """A suspect whose arguments decoded (the others fail in the worker at once)."""
    return job.recoveries > 0 and not isinstance(job.args, Undecodable)


class IsolatedRunner:
    """Runs one job in a child process and returns its outcome."""

    def __init__(self, app_spec: str, config: Callable[[], Any], budget: int) -> None:
        self.app_spec = app_spec
        self.config = config  # the app's settings as the worker runs with them, DSN included
        self.budget = budget
        self.mp = multiprocessing.get_context("forkserver")
        self.mp.set_forkserver_preload(["pgjobs.worker.isolated_child",
                                        app_spec.partition(":")[0]])

    async def run(self, job: ClaimedJob, ctx: JobContext) -> Outcome:
        """The child's outcome; ``crashed`` when it died without one. Cancelled (lease
        lost, shutdown): the child is killed and the cancellation goes on."""
        document = {f.name: getattr(job, f.name) for f in fields(ClaimedJob)}
        receiver, sender = self.mp.Pipe(duplex=False)
        proc = self.mp.Process(target=_child_main, args=(self.app_spec, self.config(),
                                                         document, sender, os.getpid()),
                               name=f"pgjobs-job-{job.id}", daemon=True)
        try:
            # The first start also starts the fork server (imports the app): in a thread,
            # so the heartbeat goes on meanwhile.
            await asyncio.to_thread(proc.start)
            sender.close()
            reply = await _receive(receiver, ctx)
            await _readable(proc.sentinel)
            proc.join()
        except BaseException:
            with contextlib.suppress(Exception):
                proc.kill()
            raise
        finally:
            receiver.close()
        status = proc.exitcode
        proc.close()
        if reply is None or status != 0:
            how = (f"was killed by {signal.Signals(-status).name}" if status and status < 0
                   else f"exited with status {status} before it reported an outcome")
            log.warning("job %s (task %s, recovered %s time(s)) ran alone in a process "
                        "of its own, which %s", job.id, job.task, job.recoveries, how)
            return crashed(job, self.budget, how)
        # What the handler completed in its own transaction (complete(conn), transaction())
        ctx.completed = ctx.completed or bool(reply.pop("completed", False))
        ctx.committed = ctx.committed or bool(reply.pop("committed", False))
        return Outcome(**{k: v for k, v in reply.items() if k in _OUTCOME_FIELDS})


async def _readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def _receive(receiver: Connection, ctx: JobContext) -> dict[str, Any] | None:
    """The child's outcome, or None once it closed the pipe without one (it died). The
    reports it sends meanwhile (and with its outcome) go into ``ctx``, for the heartbeat
    and the outcome's write."""
    while True:
        await _readable(receiver.fileno())
        try:
            message = receiver.recv()
        except (EOFError, OSError):
            return None
        if not isinstance(message, dict):
            return None
        report = message.pop("report", None)
        if isinstance(report, list) and len(report) == 2:
            ctx.reported(*report)
        if "kind" in message:
            return message if isinstance(message["kind"], str) else None
