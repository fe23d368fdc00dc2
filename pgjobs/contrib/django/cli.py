"""``manage.py pgjobs worker | migrate | status``: the ``pgjobs`` command's own
subcommands (``pgjobs.ops.cli``), so every option, its ``PGJOBS_*`` twin and its help are
the same; the database, the schema and the app come from the Django settings."""

from __future__ import annotations

from typing import Any

import click

from ...ops.cli.common import Target
from ...ops.cli.main import Group, migrate
from ...ops.cli.status import status
from ...ops.cli.worker import worker
from . import APP_SPEC
from .conf import get_app


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def django_cli(ctx: click.Context) -> None:
    """pgjobs for this Django project: its database and schema come from the settings
    (PGJOBS, else DATABASES["default"]); its tasks from each installed app's tasks.py."""
    app = get_app()
    ctx.obj = Target(app.dsn, app.config.schema)
    # The worker runs this project's app; by default it serves every queue a task or a
    # PgJobsBackend (its QUEUES) may use.
    ctx.default_map = {"worker": {"app_spec": APP_SPEC, "queues": ",".join(queues())}}


def queues() -> list[str]:
    """The queues of the registered tasks, of every PgJobsBackend's QUEUES, and default."""
    from django.conf import settings

    names = {task.opts.queue for task in get_app().tasks.values()} | {"default"}
    for backend in dict(getattr(settings, "TASKS", None) or {}).values():
        if str(backend.get("BACKEND", "")).startswith("pgjobs.contrib.django"):
            names |= set(backend.get("QUEUES") or ())
    return sorted(names)


for command in (worker, migrate, status):
    django_cli.add_command(command)


def run(args: list[str], prog_name: str, standalone: bool = True) -> Any:
    return django_cli.main(args=args, prog_name=prog_name, standalone_mode=standalone)
