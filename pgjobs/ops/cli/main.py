"""The ``pgjobs`` command line: the group, its global options, and ``pgjobs migrate``.
Every option has a ``PGJOBS_*`` environment twin; each subcommand lives in its module."""

from __future__ import annotations

from typing import Any

import click
import psycopg

from ...core.errors import PgJobsError
from ...core.names import check_schema
from ...core.version import __version__
from .bench import bench
from .common import Target
from .dashboard import dashboard
from .dev import dev
from .exporter import exporter
from .jobs import jobs
from .periodic import periodic
from .queues import queue
from .roles import roles
from .status import status
from .worker import worker


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
    ctx.obj = Target(dsn, schema)


@cli.command()
@click.option("--sql", "print_sql", is_flag=True, envvar="PGJOBS_MIGRATE_SQL", show_envvar=True,
              help="Print the SQL instead of applying it (for a DBA to review and run).")
@click.option("--downgrade", metavar="REV", envvar="PGJOBS_MIGRATE_DOWNGRADE", show_envvar=True,
              help="Revert to revision REV ('base' removes every pgjobs table).")
@click.option("--from", "start", metavar="REV", envvar="PGJOBS_MIGRATE_FROM", show_envvar=True,
              help="With --sql: print only the revisions after REV.")
@click.pass_obj
def migrate(obj: Target, print_sql: bool, downgrade: str | None, start: str | None) -> None:
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

    from .. import migrate as _migrate

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


for command in (worker, bench, dashboard, dev, exporter, jobs, periodic, queue, roles, status):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="pgjobs", auto_envvar_prefix=None)
