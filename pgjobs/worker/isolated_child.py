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


async def execute(app: Any, job: ClaimedJob) -> tuple[Outcome, JobContext]:
    """The job's outcome, and its context (did the handler complete it in its own
    transaction?)."""
    pools = TransactionPools(lambda: str(app.dsn), 1, app.config.prepare_threshold)
    ctx = JobContext(job, app.queries, pools=pools)
    executor = Executor(app.tasks, threads=1, hooks=app.hooks)
    try:
        outcome = await executor.execute(job, ctx)
    finally:
        executor.shutdown()
        await pools.close()
    return outcome, ctx


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
    outcome, ctx = asyncio.run(execute(app, job))
    sender.send({**asdict(outcome), "completed": ctx.completed, "committed": ctx.committed})
    sender.close()
    logging.shutdown()
    # A sync handler that ignored should_stop may still hold a thread: do not wait for it.
    os._exit(0)
