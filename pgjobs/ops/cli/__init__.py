"""The ``pgjobs`` command line (``pgjobs --help``)."""

from .main import cli, main

__all__ = ["cli", "main"]
