"""The process a suspect runs in (see ``worker.isolated``), forked by the fork server:
it takes the app (imported there already), runs the executor's pipeline for its one job
and sends the outcome back through a pipe."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import select
import sys
import threading
import time
from dataclasses import asdict
from multiprocessing.connection import Connection
from typing import Any

from ..core.outcomes import Outcome
from ..core.types import ClaimedJob
from .context import JobContext
from .executor import Executor
from .txpool import TransactionPools


def load_app(spec: str) -> Any:
    """``pkg.module:app``, imported as ``pgjobs worker --app`` does (the current
    directory importable)."""
    module_name, _, attribute = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


REPORT_EVERY = 0.5
"""Seconds between two looks for new reports (progress, checkpoint) to send the worker."""


class Reporter:
    """Sends the worker what the handler reports (``progress``, ``checkpoint``), from a
    thread of this process, so that the worker's heartbeat writes it as for any job. Each
    message is ``{"report": [progress, checkpoint]}`` (JSON texts, None: nothing new);
    the outcome that ends the conversation carries the last ones too."""

    def __init__(self, ctx: JobContext, sender: Connection) -> None:
        self.ctx = ctx
        self.sender = sender
        self.lock = threading.Lock()  # one message at a time on the pipe
        self.sent = (0, 0)
        self.done = threading.Event()

    def news(self) -> list[str | None] | None:
        """The reports made since the last message (None: nothing new)."""
        (progress, checkpoint), versions = self.ctx.unwritten()
        p_sent, c_sent = self.sent
        fresh = [progress if versions[0] > p_sent else None,
                 checkpoint if versions[1] > c_sent else None]
        self.sent = versions
        return fresh if fresh != [None, None] else None

    def run(self) -> None:
        while not self.done.wait(REPORT_EVERY):
            with self.lock:
                news = self.news()
                if news is not None:
                    self.sender.send({"report": news})

    def finish(self, reply: dict[str, Any]) -> None:
        """Send the outcome (with any report not sent yet) and stop."""
        self.done.set()
        with self.lock:
            self.sender.send({**reply, "report": self.news()})


async def execute(app: Any, job: ClaimedJob, sender: Connection | None = None
                  ) -> tuple[Outcome, JobContext, Reporter | None]:
    """The job's outcome, its context (did the handler complete it in its own
    transaction?) and, given the pipe to the worker, the reporter that sends what the
    handler reports meanwhile."""
    pools = TransactionPools(lambda: str(app.dsn), 1, app.config.prepare_threshold)
    ctx = JobContext(job, app.queries, pools=pools)
    reporter = None if sender is None else Reporter(ctx, sender)
    if reporter is not None:
        threading.Thread(target=reporter.run, name="pgjobs-reporter", daemon=True).start()
    executor = Executor(app.tasks, threads=1, hooks=app.hooks)
    try:
        outcome = await executor.execute(job, ctx)
    finally:
        executor.shutdown()
        await pools.close()
    return outcome, ctx, reporter


WORKER_GONE = 70
"""This process's exit status when its worker died first."""


def die_with(worker_pid: int) -> None:
    """Exit at once (status WORKER_GONE) when the worker that started this process is
    gone. The process is the fork server's child, not the worker's, so the kernel does
    not tell it; without this, a SIGKILLed worker left its suspects running, and the fork
    server with them (this process holds the end of the pipe that ends the fork server).
    Their jobs are reclaimed and run elsewhere, so nothing they would still write is
    wanted. A pidfd (Linux 5.3) says exactly when; elsewhere, a check twice a second."""

    def watch() -> None:
        try:
            pidfd = os.pidfd_open(worker_pid)
        except (AttributeError, OSError):
            pidfd = None
        if pidfd is not None:
            select.select([pidfd], [], [])  # readable once the process has exited
        else:
            while True:
                try:
                    os.kill(worker_pid, 0)
                except ProcessLookupError:
                    break
                except PermissionError:
                    pass
                time.sleep(0.5)
        os._exit(WORKER_GONE)

    threading.Thread(target=watch, name="pgjobs-worker-watch", daemon=True).start()


def main(spec: str, config: Any, document: dict[str, Any], sender: Connection,
         worker_pid: int) -> None:
    """Run the job, send its outcome's fields (and ``completed``, ``committed``), exit;
    exit at once if the worker ``worker_pid`` dies first."""
    die_with(worker_pid)
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = load_app(spec)
    app.config = config  # as the worker runs with it (the command line's DSN and settings)
    job = ClaimedJob(**document)
    outcome, ctx, reporter = asyncio.run(execute(app, job, sender))
    assert reporter is not None
    reporter.finish({**asdict(outcome), "completed": ctx.completed, "committed": ctx.committed})
    sender.close()
    logging.shutdown()
    # A sync handler that ignored should_stop may still hold a thread: do not wait for it.
    os._exit(0)
