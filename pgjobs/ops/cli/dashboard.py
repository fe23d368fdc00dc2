"""``pgjobs dashboard``: the web dashboard, served by uvicorn.

The dashboard and its dependencies (Starlette, Jinja2, uvicorn) are the extra
``pgjobs[dashboard]``; they are imported only inside the command, so every other command
works without them, and this one says what to install.
"""

from __future__ import annotations

import click
import psycopg

from .common import Target, connect


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, envvar="PGJOBS_DASHBOARD_HOST",
              show_envvar=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True,
              envvar="PGJOBS_DASHBOARD_PORT", show_envvar=True, help="Port to listen on.")
@click.option("--read-only", is_flag=True, envvar="PGJOBS_DASHBOARD_READ_ONLY", show_envvar=True,
              help="Show everything, change nothing: no action is offered and every POST "
                   "is refused.")
@click.option("--no-auth", is_flag=True, envvar="PGJOBS_DASHBOARD_NO_AUTH", show_envvar=True,
              help="Serve without a password; only allowed on a loopback address.")
@click.option("--refresh", type=click.FloatRange(min=0), default=5.0, show_default=True,
              envvar="PGJOBS_DASHBOARD_REFRESH", show_envvar=True,
              help="Seconds between live refreshes of the open page (0: off).")
@click.pass_obj
def dashboard(obj: Target, host: str, port: int, read_only: bool, no_auth: bool,
              refresh: float) -> None:
    """Serve the web dashboard: queues, jobs, batches, schedules and workers, with retry,
    cancel, delete and pause (docs/dashboard.md).

    It asks for HTTP Basic credentials, PGJOBS_DASHBOARD_USER and
    PGJOBS_DASHBOARD_PASSWORD, and refuses to start without them unless --no-auth is
    given on a loopback address (the default, 127.0.0.1). Connect it as a role that
    may do no more than it should: `pgjobs roles` creates a dashboard role and a
    read-only one.

    \b
      export PGJOBS_DASHBOARD_USER=ops PGJOBS_DASHBOARD_PASSWORD=...
      pgjobs dashboard --host 0.0.0.0 --port 8080
      pgjobs dashboard --no-auth          # on this machine only
    """
    try:
        import uvicorn

        from ...dashboard import BasicAuth, create_app
        from ...dashboard.security import is_loopback
    except ImportError as exc:
        raise click.ClickException(
            f"the dashboard needs its extra ({exc.name} is not installed): "
            "pip install 'pgjobs[dashboard]'") from None
    auth = BasicAuth.from_env()
    if no_auth:
        if not is_loopback(host):
            raise click.UsageError(
                f"--no-auth lets anyone who reaches {host}:{port} steer the queue: it is only "
                "allowed on a loopback address (127.0.0.1, ::1, localhost). Set "
                "PGJOBS_DASHBOARD_USER and PGJOBS_DASHBOARD_PASSWORD to listen there.")
        auth = None
    elif auth is None:
        raise click.UsageError(
            "the dashboard refuses to start without credentials: set PGJOBS_DASHBOARD_USER "
            "and PGJOBS_DASHBOARD_PASSWORD (HTTP Basic), or pass --no-auth to serve on a "
            "loopback address without them")
    app = create_app(obj.dsn, obj.schema, auth=auth, read_only=read_only, refresh=refresh)
    try:
        with connect(obj):
            pass
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        click.echo(f"warning: cannot reach the database yet ({first}); the pages say so "
                   "until it is up", err=True)
    shown = f"[{host}]" if ":" in host else host
    mode = ", read-only" if read_only else ""
    who = "no password" if auth is None else f"user {auth.user}"
    click.echo(f"pgjobs dashboard on http://{shown}:{port}/ (schema {obj.schema!r}, {who}{mode})")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False,
                server_header=False)
