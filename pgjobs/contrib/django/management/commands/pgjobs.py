"""``python manage.py pgjobs worker | migrate | status`` (``--help`` on each)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):  # type: ignore[misc]
    help = ("pgjobs for this project: `worker` runs jobs, `migrate` creates or upgrades "
            "pgjobs' schema, `status` shows queues and workers (the pgjobs command's own "
            "options; see `manage.py pgjobs --help`).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("args", nargs=argparse.REMAINDER,
                            help="worker | migrate | status, and their options")

    def run_from_argv(self, argv: list[str]) -> None:
        """Hand everything after ``pgjobs`` to the click commands (Django's own options
        such as --settings have been applied by manage.py already)."""
        from ...cli import run

        run(argv[2:], prog_name=f"{os.path.basename(argv[0])} pgjobs")

    def handle(self, *args: str, **options: Any) -> None:
        """``call_command("pgjobs", "status", ...)``: the same, raising instead of exiting."""
        from ...cli import run

        run(list(args), prog_name="pgjobs", standalone=False)
