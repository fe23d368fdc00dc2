"""``pgjobs worker --processes N``: a supervisor over N worker processes.

Each child is an ordinary ``pgjobs worker`` subprocess (a fresh interpreter that imports
the application itself). The supervisor never runs jobs and never imports new code into
itself; it only starts, watches and signals its children:

- a child that exits unexpectedly is started again, after a backoff that grows while
  children keep failing quickly (0.5 s doubling to 30 s);
- SIGTERM/SIGINT: forward SIGTERM to every child (each drains: no new claims, running jobs
  get --shutdown-timeout), wait for all of them, exit 0. A second one is forwarded too,
  which stops the children at once, as it does a single worker;
- SIGHUP: a rolling restart. For each slot in turn, start a replacement, wait until it
  has registered in ``workers``, then SIGTERM the old child so it drains. Capacity never
  drops, and no job is lost or run twice (the old child finishes or releases what it
  holds). A replacement that exits or fails to register in time aborts the rolling
  restart and the old children keep running: a broken deploy does not take the fleet down;
- SIGTSTP is forwarded (quiet: no new claims);
- with ``--metrics-port``, the supervisor serves the metrics of all its children on that
  port: each child writes its values to a directory the supervisor owns (cleared at
  start, removed at exit unless ``PROMETHEUS_MULTIPROC_DIR`` named it), and a child that
  exits has its live gauges dropped.

Children run in their own process group, so a terminal's Ctrl-C reaches the supervisor
only (which then drains them once), and on Linux they receive SIGTERM should the
supervisor itself die.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import psycopg

from ..core.errors import SchemaNotReady
from ..db import workers
from ..db.queries import Queries

log = logging.getLogger("pgjobs.supervisor")

TICK = 0.1
BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
HEALTHY_AFTER = 30.0
"""A child that ran this long before exiting resets the backoff."""
METRICS_DIR_ENV = "PGJOBS_METRICS_DIR"
"""Set by the supervisor for its children when it serves their metrics: they record
metrics there (prometheus_client's multiprocess mode) and serve none themselves."""


@dataclass(eq=False)
class Child:
    proc: subprocess.Popen[bytes]
    slot: int
    after_id: int
    """The highest ``workers.id`` before it started: its own row has a greater id."""
    started: float = field(default_factory=time.monotonic)
    worker_id: int | None = None
    signalled: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: signal.Signals) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)


@dataclass
class SupervisorConfig:
    command: Sequence[str]
    """The child's command line (an ordinary ``pgjobs worker``)."""
    env: dict[str, str]
    processes: int
    dsn: str
    schema: str
    start_timeout: float = 60.0
    """Seconds a replacement gets to register during a rolling restart."""
    burst: bool = False
    """Children exit 0 when the queue is empty; do not restart them then."""
    metrics: tuple[str, int] | None = None
    """(host, port) to serve the children's Prometheus metrics on (None: no metrics)."""


class Supervisor:
    def __init__(self, config: SupervisorConfig) -> None:
        self.config = config
        self.queries = Queries(config.schema)
        self.host = socket.gethostname()
        self.slots: list[Child | None] = [None] * config.processes
        self.failures = [0] * config.processes
        self.restart_at = [0.0] * config.processes
        self.draining: list[Child] = []
        self.stops = 0
        self.stops_forwarded = 0
        self.hup = False
        self.tstp = False
        self.rolling: list[int] = []
        self.replacement: tuple[Child, float] | None = None
        self.ever_registered = False
        self.exit_code = 0
        self.done = [False] * config.processes
        self._conn: psycopg.Connection[Any] | None = None
        self.metrics = Metrics(config) if config.metrics else None

    # -- signals -------------------------------------------------------------------------

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stops += 1

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self.hup = True

    def _on_tstp(self, signum: int, frame: FrameType | None) -> None:
        self.tstp = True

    # -- main loop -----------------------------------------------------------------------

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGTSTP, self._on_tstp)
        log.info("pgjobs supervisor pid=%s: starting %d worker process(es)",
                 os.getpid(), self.config.processes)
        if self.metrics is not None:
            self.metrics.start()
        for slot in range(self.config.processes):
            self.slots[slot] = self._spawn(slot)
        try:
            while self._step():
                if self.metrics is not None:
                    self.metrics.sweep()
                time.sleep(TICK)
        finally:
            for child in self._children():
                child.signal(signal.SIGKILL)
            if self._conn is not None:
                self._conn.close()
            if self.metrics is not None:
                self.metrics.stop()
        log.info("pgjobs supervisor stopped")
        return self.exit_code

    def _step(self) -> bool:
        """One pass of the loop; False when the supervisor is done."""
        if self.stops > self.stops_forwarded:
            self._forward_stop()
        if self.tstp:
            self.tstp = False
            for child in self._children():
                child.signal(signal.SIGTSTP)
        self._reap()
        if self.stops:
            return bool(self._children())
        self._check_registrations()
        self._roll()
        self._restart_crashed()
        return not all(self.done)  # burst: done once every child found the queue empty

    def _children(self) -> list[Child]:
        children = [c for c in self.slots if c is not None] + self.draining
        if self.replacement is not None:
            children.append(self.replacement[0])
        return children

    def _spawn(self, slot: int) -> Child:
        after = self._last_worker_id()
        proc = subprocess.Popen(
            list(self.config.command), env=self.config.env, process_group=0,
            preexec_fn=_die_with_parent,
        )
        log.info("started worker process pid=%s (slot %d)", proc.pid, slot + 1)
        child = Child(proc, slot, after)
        if self.metrics is not None:
            self.metrics.children.append(child)
        return child

    def _forward_stop(self) -> None:
        first = self.stops_forwarded == 0
        self.stops_forwarded = self.stops
        if first:
            log.info("stopping: draining %d worker process(es)", len(self._children()))
            self.rolling.clear()
        for child in self._children():
            # A child the supervisor already asked to drain is only signalled again on a
            # second stop request, which tells it to stop at once.
            if child.signalled < (1 if first else 2):
                child.signalled += 1
                child.signal(signal.SIGTERM)

    def _reap(self) -> None:
        replacement = self.replacement
        if replacement is not None and self.stops and replacement[0].proc.poll() is not None:
            self.replacement = None
        for drained in list(self.draining):
            code = drained.proc.poll()
            if code is not None:
                self.draining.remove(drained)
                log.info("worker process pid=%s drained and exited (status %s)",
                         drained.pid, code)
        for slot, child in enumerate(self.slots):
            if child is None:
                continue
            code = child.proc.poll()
            if code is None:
                continue
            self.slots[slot] = None
            if self.stops:
                log.info("worker process pid=%s exited (status %s)", child.pid, code)
                continue
            if code == 0 and self.config.burst:
                log.info("worker process pid=%s finished (burst)", child.pid)
                self.done[slot] = True
                continue
            if child.worker_id is None and not self.ever_registered and code > 0:
                # Registered since the last look? Then it had started: restart it below.
                # (Killed by a signal, code < 0, it did not fail by itself either.)
                self._check_registrations([child])
            if child.worker_id is None and not self.ever_registered and code > 0:
                log.error("worker process pid=%s exited with status %s before it started; "
                          "see its output above. Stopping.", child.pid, code)
                self.exit_code = 1
                self.stops += 1
                continue
            lived = time.monotonic() - child.started
            self.failures[slot] = 0 if lived >= HEALTHY_AFTER else self.failures[slot] + 1
            delay = 0.0 if not self.failures[slot] else min(
                BACKOFF_MAX, BACKOFF_START * 2 ** (self.failures[slot] - 1))
            self.restart_at[slot] = time.monotonic() + delay
            log.warning("worker process pid=%s exited unexpectedly (status %s); restarting "
                        "it in %.1f s", child.pid, code, delay)

    def _restart_crashed(self) -> None:
        for slot, child in enumerate(self.slots):
            busy = self.replacement is not None and self.replacement[0].slot == slot
            if (child is None and not self.done[slot] and not busy
                    and time.monotonic() >= self.restart_at[slot]):
                self.slots[slot] = self._spawn(slot)

    # -- rolling restart -----------------------------------------------------------------

    def _roll(self) -> None:
        if self.hup:
            self.hup = False
            if self.rolling or self.replacement:
                log.info("SIGHUP during a rolling restart: it will restart every slot again")
            self.rolling.extend(s for s in range(len(self.slots)) if s not in self.rolling)
            log.info("rolling restart of %d worker process(es)", len(self.slots))
        if self.replacement is None:
            if not self.rolling:
                return
            slot = self.rolling.pop(0)
            child = self._spawn(slot)
            self.replacement = (child, time.monotonic() + self.config.start_timeout)
            return
        child, deadline = self.replacement
        code = child.proc.poll()
        if code is not None or (child.worker_id is None and time.monotonic() > deadline):
            reason = (f"exited with status {code}" if code is not None
                      else f"did not register within {self.config.start_timeout:g} s")
            log.error("rolling restart aborted: the replacement for slot %d (pid %s) %s; "
                      "the running worker processes are kept", child.slot + 1, child.pid,
                      reason)
            child.signal(signal.SIGKILL)
            child.proc.wait()
            self.replacement = None
            self.rolling.clear()
            return
        if child.worker_id is None:
            return
        old = self.slots[child.slot]
        self.slots[child.slot] = child
        self.replacement = None
        if old is not None:
            log.info("slot %d: worker process pid=%s registered as worker %s; draining "
                     "pid=%s", child.slot + 1, child.pid, child.worker_id, old.pid)
            old.signalled += 1
            old.signal(signal.SIGTERM)
            self.draining.append(old)
        if not self.rolling:
            log.info("rolling restart complete")

    # -- database ------------------------------------------------------------------------

    def _db(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(
                self.config.dsn, autocommit=True, application_name="pgjobs-supervisor",
                # Not a hot path: never prepare, so a transaction-mode pooler is fine.
                connect_timeout=5, prepare_threshold=None,
            )
        return self._conn

    def _last_worker_id(self) -> int:
        try:
            last = workers.last_id(self.queries).run(self._db())
        except (psycopg.Error, SchemaNotReady) as exc:
            # Unknown: any registration of the child's pid counts (a stale row of a reused
            # pid could then pass for it, which is the lesser evil than never starting).
            log.warning("supervisor cannot read workers (%s); will retry", exc)
            self._conn = None
            return 0
        return int(last or 0)

    def _check_registrations(self, children: list[Child] | None = None) -> None:
        pending = [c for c in (children or self._children()) if c.worker_id is None]
        if not pending:
            return
        try:
            conn = self._db()
            for child in pending:
                found = workers.registered(self.queries, self.host, child.pid,
                                           child.after_id).run(conn)
                if found is not None:
                    child.worker_id = int(found)
                    self.ever_registered = True
        except (psycopg.Error, SchemaNotReady) as exc:
            log.warning("supervisor cannot read workers (%s); will retry", exc)
            self._conn = None


class Metrics:
    """The children's metrics: their directory, and the port that serves their sum."""

    def __init__(self, config: SupervisorConfig) -> None:
        assert config.metrics is not None
        self.host, self.port = config.metrics
        given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self.owned = not given
        self.folder = given or tempfile.mkdtemp(prefix="pgjobs-metrics-")
        # prometheus_client reads the variable when a child imports it: set before exec.
        config.env.update({"PROMETHEUS_MULTIPROC_DIR": self.folder,
                           METRICS_DIR_ENV: self.folder})
        self.children: list[Child] = []
        self._stop: Callable[[], None] | None = None

    def start(self) -> None:
        from ..observability import prometheus

        os.makedirs(self.folder, exist_ok=True)
        prometheus.clear(self.folder)
        registry = prometheus.multiprocess_registry(self.folder)
        self._stop = prometheus.serve(self.port, self.host, registry)
        log.info("serving the metrics of every worker process on %s:%s", self.host, self.port)

    def sweep(self) -> None:
        """Drop the live gauges of children that exited (crashed, drained, replaced)."""
        from ..observability import prometheus

        for child in [c for c in self.children if c.proc.poll() is not None]:
            prometheus.process_gone(child.pid, self.folder)
            self.children.remove(child)

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()
        if self.owned:
            shutil.rmtree(self.folder, ignore_errors=True)


def _load_prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()  # looked up before any fork: the child only calls it
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: deliver SIGTERM to this child if the supervisor dies (PR_SET_PDEATHSIG)."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def run(config: SupervisorConfig) -> int:
    return Supervisor(config).run()
