"""``pgjobs worker``: run jobs, in this process or under a supervisor (``--processes``).

Its options are generated from the settings dataclasses (``ops.settings``): every field of
``WorkerConfig``, the two App settings a worker process may override (``pgbouncer``,
``listen_dsn``), and how the command runs (``Process``). A default and its help are
written once, in the field and its docstring.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass, fields, replace
from typing import Any

import click

from ...client.app import App
from ...client.config import Config
from ...core.errors import ConfigurationError
from ...worker.config import WorkerConfig
from ...worker.lifecycle import Worker
from .. import supervisor
from ..settings import Duration, build, envvar, options
from .common import Logs, Target, optional

APP_SETTINGS = ("pgbouncer", "listen_dsn")


@dataclass(frozen=True)
class Process:
    """How ``pgjobs worker`` runs, beyond the worker's own settings."""

    processes: int | None = None
    """Run a supervisor over N worker processes: crashed ones are restarted, SIGHUP
    restarts them one by one. Default: one worker, no supervisor."""
    start_timeout: float = 60.0
    """With --processes: seconds a new process gets to register during a rolling restart
    before the restart is abandoned."""
    metrics_port: int | None = None
    """Serve Prometheus metrics of this worker at /metrics on this port (needs
    pgjobs[prometheus]). With --processes, the supervisor serves the sum of all its
    processes on it. Default: no metrics."""
    metrics_host: str = "0.0.0.0"
    """The address --metrics-port listens on (0.0.0.0: every interface)."""

    def __post_init__(self) -> None:
        from ...core.errors import InvalidOption

        if self.processes is not None and self.processes < 1:
            raise InvalidOption(f"processes must be at least 1, not {self.processes!r}")
        if self.metrics_port is not None and not 0 < self.metrics_port < 65536:
            raise InvalidOption(f"metrics_port must be a TCP port (1 to 65535), not "
                                f"{self.metrics_port!r}")
        if self.start_timeout < 1:
            raise InvalidOption(f"start_timeout must be at least 1 second, not "
                                f"{self.start_timeout!r}")


SUPERVISOR_ONLY = {"processes", "start_timeout", "metrics_port", "metrics_host", "help"}
"""Options the supervisor keeps to itself: its children run without them."""


def load_app(spec: str) -> App:
    """Import ``pkg.module:attribute`` (the current directory is importable)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"--app must look like pkg.module:app, not {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r} for --app: {exc}") from exc
    for part in attribute.split("."):
        target = getattr(target, part, None)
    if not isinstance(target, App):
        raise ConfigurationError(f"{spec!r} is not a pgjobs.App (found {type(target).__name__})")
    return target


@click.command()
@click.option("--app", "app_spec", required=True, envvar="PGJOBS_APP", show_envvar=True,
              metavar="PKG.MODULE:APP", help="The pgjobs.App whose tasks this worker runs.")
@options(WorkerConfig)
@options(Config, APP_SETTINGS)
@options(Process)
@options(Logs)
@click.pass_obj
def worker(obj: Target, /, app_spec: str, **params: Any) -> None:
    """Run jobs: claim, execute, heartbeat, reclaim lost jobs.

    \b
    Signals: SIGTERM/SIGINT stop claiming and wait --shutdown-timeout for running jobs,
    then release the rest (their attempt is not counted); a second one stops at once.
    SIGTSTP quiets the worker (no new claims) until it is stopped.
    With --processes, the supervisor forwards these to every process, and SIGHUP makes
    a rolling restart: each process is replaced by a new one that imports the code
    afresh, and drained once its replacement runs.
    """
    # Built before the app is imported: bad settings fail here, once, with their message.
    process = build(Process, _pick(Process, params))
    config = build(WorkerConfig, _pick(WorkerConfig, params))
    build(Logs, _pick(Logs, params)).configure()
    app = load_app(app_spec)
    parent = click.get_current_context().parent
    explicit = parent is not None and parent.get_parameter_source("schema") not in (
        click.core.ParameterSource.DEFAULT, None)
    if explicit and obj.schema != app.config.schema:
        raise ConfigurationError(
            f"--schema/PGJOBS_SCHEMA says {obj.schema!r} but {app_spec} uses schema "
            f"{app.config.schema!r}; the app's schema decides (App(schema=...))"
        )
    if app.config.dsn is None and obj.dsn_option:
        app.config = replace(app.config, dsn=obj.dsn_option)
    overrides = {name: value for name, value in _pick(Config, params).items() if value}
    if overrides:
        app.config = replace(app.config, **overrides)
    app.dsn  # noqa: B018 - fail now, with the message naming `pgjobs dev start`
    if process.processes is not None:
        env = {k: v for k, v in os.environ.items()
               if k not in {envvar(name) for name in SUPERVISOR_ONLY}}
        flags = _child_flags(click.get_current_context(), env)
        # The database and schema go by environment, never on a command line `ps` shows.
        env.update(PGJOBS_DATABASE_URL=app.dsn, PGJOBS_SCHEMA=obj.schema)
        if app.config.listen_dsn:
            env.update(PGJOBS_LISTEN_DSN=app.config.listen_dsn)
        sys.exit(supervisor.run(supervisor.SupervisorConfig(
            command=[sys.executable, "-m", "pgjobs", "worker", *flags], env=env,
            processes=process.processes, dsn=app.dsn, schema=app.config.schema,
            start_timeout=process.start_timeout, burst=config.burst,
            metrics=_metrics_address(process),
        )))
    _record_metrics(app, process)
    asyncio.run(_run_worker(Worker(app, config, app_spec=app_spec)))
    # A sync handler that ignores should_stop keeps its thread; do not wait for it.
    if any(t.name.startswith("pgjobs-job") and t.is_alive() for t in threading.enumerate()):
        logging.shutdown()
        os._exit(0)


def _metrics_address(process: Process) -> tuple[str, int] | None:
    if process.metrics_port is None:
        return None
    optional("prometheus", "--metrics-port")  # fail now, not in every child
    return process.metrics_host, process.metrics_port


def _record_metrics(app: App, process: Process) -> None:
    """A worker records metrics with --metrics-port, and serves them itself unless its
    supervisor does (which then set ``PGJOBS_METRICS_DIR`` for it)."""
    supervised = os.environ.get(supervisor.METRICS_DIR_ENV)
    if process.metrics_port is None and not supervised:
        return
    prometheus = optional("prometheus", "--metrics-port")
    prometheus.record(app)
    if process.metrics_port is not None and not supervised:
        prometheus.serve(process.metrics_port, process.metrics_host)


def _pick(cls: type, params: dict[str, Any]) -> dict[str, Any]:
    """The values of ``params`` that are fields of ``cls``."""
    names = {f.name for f in fields(cls)}
    return {name: value for name, value in params.items() if name in names}


def _child_flags(ctx: click.Context, env: dict[str, str]) -> list[str]:
    """The worker command line of a supervised process: every option of this one as
    given or defaulted, except the supervisor's own (so no option is ever forgotten).
    Connection strings go into ``env`` instead, never on a command line `ps` shows."""
    flags: list[str] = []
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name in SUPERVISOR_ONLY:
            continue
        value = ctx.params.get(param.name or "")
        if value is None and isinstance(param.type, Duration) and param.default != "never":
            value = "never"  # given as never: not the default
        if value is None:
            continue
        if "dsn" in (param.name or "") and isinstance(param.envvar, str):
            env[param.envvar] = str(value)
        elif param.is_flag and param.secondary_opts:  # --listen/--no-listen
            flags.append(param.opts[0] if value else param.secondary_opts[0])
        elif param.is_flag:
            flags.extend(param.opts[:1] if value else [])
        else:
            flags.extend([param.opts[0], str(value)])
    return flags


async def _run_worker(w: Worker) -> None:
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def stop() -> None:
        nonlocal signals_seen
        signals_seen += 1
        w.stop(immediately=signals_seen > 1)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    loop.add_signal_handler(signal.SIGTSTP, w.quiet)
    await w.run()
