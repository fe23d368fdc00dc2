"""``pgjobs exporter``: serve the queue-wide gauges to Prometheus, computed in SQL once per
scrape (``pgjobs.observability.exporter``). Run one per database, next to the workers'
own ``--metrics-port``."""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from typing import Any

import click

from ...core.errors import InvalidOption
from ..settings import build, options
from .common import Logs, Target, optional


@dataclass(frozen=True)
class Exporter:
    """Where ``pgjobs exporter`` serves."""

    port: int = 9188
    """The port /metrics is served on."""
    host: str = "0.0.0.0"
    """The address it listens on (0.0.0.0: every interface)."""

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise InvalidOption(f"port must be a TCP port (1 to 65535), not {self.port!r}")


@click.command()
@options(Exporter, env_prefix="exporter_")
@options(Logs)
@click.pass_obj
def exporter(obj: Target, /, **params: Any) -> None:
    """Serve queue-wide Prometheus gauges: jobs by queue and state, the age of the oldest
    due job per queue, dead jobs, live workers and pending batches.

    \b
    One statement per scrape, on a connection of its own: run one exporter per
    database, not one per worker. SIGTERM or SIGINT stops it. See
    docs/observability.md for the metrics and the alerts worth setting.
    """
    settings = build(Exporter, {k: v for k, v in params.items() if k in ("port", "host")})
    build(Logs, {k: v for k, v in params.items() if k.startswith("log_")}).configure()
    module = optional("exporter", "pgjobs exporter")
    prometheus = optional("prometheus", "pgjobs exporter")
    stop = prometheus.serve(settings.port, settings.host, module.registry(obj.dsn, obj.schema))
    click.echo(f"pgjobs exporter: serving schema {obj.schema!r} on "
               f"http://{settings.host}:{settings.port}/metrics", err=True)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: done.set())
    done.wait()
    stop()
