"""``pgjobs queue ...``: run-time controls of queues. They write the ``queues`` table
only, so they need the database but not the application's code; plain SQL does the same
(docs/queues.md)."""

from __future__ import annotations

from datetime import timedelta

import click

from ...core.names import channel_for
from ...db import queues as db_queues
from ...db.queries import Queries
from .common import Target, connect, queue_name, seconds, table


@click.group()
def queue() -> None:
    """Pause, resume and limit queues at run time (the `queues` table).

    \b
      pgjobs queue pause mail
      pgjobs queue limit mail --concurrency 5 --rate 100 --per 60
      pgjobs queue list
    """


@queue.command("list")
@click.pass_obj
def queue_list(obj: Target) -> None:
    """Every queue with settings or waiting/running jobs."""
    with connect(obj) as conn:
        rows = db_queues.list_all(Queries(obj.schema)).run(conn)
    table(
        ["QUEUE", "PAUSED", "CONCURRENCY", "RATE", "AVAILABLE", "RUNNING"],
        [[r["name"], "yes" if r["paused"] else "no",
          "-" if r["concurrency_limit"] is None else str(r["concurrency_limit"]),
          "-" if r["rate_limit"] is None else f"{r['rate_limit']} per {seconds(r['rate_period'])}",
          str(r["available"]), str(r["running"])] for r in rows],
    )


def _set_paused(obj: Target, name: str, paused: bool) -> None:
    query = db_queues.set_paused(Queries(obj.schema), queue_name(name), paused,
                                 channel_for(obj.schema))
    with connect(obj) as conn:
        query.run(conn)
    click.echo(f"queue {name!r} {'paused' if paused else 'resumed'}")


@queue.command("pause")
@click.argument("name")
@click.pass_obj
def queue_pause(obj: Target, name: str) -> None:
    """Stop claiming jobs of queue NAME (running jobs finish; new ones keep arriving)."""
    _set_paused(obj, name, True)


@queue.command("resume")
@click.argument("name")
@click.pass_obj
def queue_resume(obj: Target, name: str) -> None:
    """Claim jobs of queue NAME again (idle workers are woken at once)."""
    _set_paused(obj, name, False)


@queue.command("limit")
@click.argument("name")
@click.option("--concurrency", type=click.IntRange(min=0), default=None,
              envvar="PGJOBS_QUEUE_CONCURRENCY", show_envvar=True,
              help="Most running jobs of the queue across all workers (0: no limit).")
@click.option("--rate", type=click.IntRange(min=0), default=None,
              envvar="PGJOBS_QUEUE_RATE", show_envvar=True,
              help="Most jobs started per --per seconds across all workers (0: no limit).")
@click.option("--per", "per", type=click.FloatRange(min=0.001), default=None,
              envvar="PGJOBS_QUEUE_PER", show_envvar=True,
              help="The window of --rate, in seconds (a sliding window).")
@click.pass_obj
def queue_limit(obj: Target, name: str, concurrency: int | None, rate: int | None,
                per: float | None) -> None:
    """Set or remove queue NAME's concurrency and rate limits; options left out keep their
    current value."""
    if concurrency is None and rate is None:
        raise click.UsageError("give --concurrency N and/or --rate N --per SECONDS")
    if rate and per is None:
        raise click.UsageError("--rate N needs --per SECONDS (for example --rate 100 --per 60)")
    if per is not None and rate is None:
        raise click.UsageError("--per only applies with --rate")
    query = db_queues.set_limits(
        Queries(obj.schema), queue_name(name), channel_for(obj.schema),
        concurrency_limit=concurrency or None, set_concurrency=concurrency is not None,
        rate_limit=rate or None, set_rate=rate is not None,
        rate_period=timedelta(seconds=per) if rate and per else None,
    )
    with connect(obj) as conn:
        row = query.run(conn)
    assert row is not None
    limit, rate_limit, period = row["concurrency_limit"], row["rate_limit"], row["rate_period"]
    click.echo(
        f"queue {name!r}: concurrency {'unlimited' if limit is None else limit}, rate "
        f"{'unlimited' if rate_limit is None else f'{rate_limit} per {seconds(period)}'}"
    )
