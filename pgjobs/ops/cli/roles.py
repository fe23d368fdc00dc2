"""``pgjobs roles``: create the owner, app, worker and dashboard roles and grant each what
it needs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
import psycopg
from psycopg import sql

from ...core.errors import PgJobsError
from .common import Target, connect

FC = TypeVar("FC", bound=Callable[..., Any])


def _role_option(kind: str, default: str, what: str) -> Callable[[FC], FC]:
    return click.option(f"--{kind.replace('_', '-')}", kind, default=default, show_default=True,
                        envvar=f"PGJOBS_{kind.upper()}_ROLE", show_envvar=True, help=what)


@click.command()
@click.option("--sql", "print_sql", is_flag=True, envvar="PGJOBS_ROLES_SQL", show_envvar=True,
              help="Print the SQL instead of applying it (for a DBA to review and run).")
@_role_option("owner", "pgjobs_owner", "Role that owns the schema; run `pgjobs migrate` as it.")
@_role_option("app", "pgjobs_app", "Role that enqueues jobs and reads their state.")
@_role_option("worker", "pgjobs_worker", "Role that runs `pgjobs worker`.")
@_role_option("dashboard", "pgjobs_dashboard",
              "Role that runs `pgjobs dashboard`: reads, retries, cancels, deletes, pauses.")
@_role_option("dashboard_readonly", "pgjobs_dashboard_ro",
              "Role that runs `pgjobs dashboard --read-only`: reads only.")
@click.pass_obj
def roles(obj: Target, print_sql: bool, owner: str, app: str, worker: str, dashboard: str,
          dashboard_readonly: str) -> None:
    """Create the owner, app, worker and dashboard roles and grant each what it needs
    (docs/security.md, docs/dashboard.md).

    Idempotent. Roles are created with LOGIN and no password when missing: set one with
    ALTER ROLE ... PASSWORD. Apply it as a superuser (or a role with CREATEROLE that owns
    the schema), then `pgjobs migrate` as the owner, then run it again: objects that did
    not exist yet get their grants. Run it again after every migrate.
    """
    from ..roles import Roles, roles_sql

    try:
        names = Roles(owner=owner, app=app, worker=worker, dashboard=dashboard,
                      dashboard_readonly=dashboard_readonly)
        script = roles_sql(obj.schema, names)
    except PgJobsError as exc:
        raise click.UsageError(str(exc)) from None
    if print_sql:
        click.echo(script, nl=False)
        return
    with connect(obj) as conn:
        try:
            conn.execute(script)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise click.ClickException(
                f"{exc.diag.message_primary}: run `pgjobs roles` as a superuser, or as a role "
                "with CREATEROLE that owns the schema's objects (or print the script with "
                "--sql for your DBA)"
            ) from exc
        migrated = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (
            sql.Identifier(obj.schema, "jobs").as_string(None),)).fetchone()
    click.echo(f"roles {owner}, {app}, {worker}, {dashboard} and {dashboard_readonly} are set "
               f"up for schema {obj.schema!r}")
    if not migrated or not migrated[0]:
        click.echo(f"the schema has no tables yet: run `pgjobs migrate` as {owner}, then "
                   "`pgjobs roles` again to grant on them")
