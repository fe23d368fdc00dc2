"""LISTEN for enqueue notifications on a connection of its own (``App.listen_dsn``: a
direct one when the others go through PgBouncer). A lost connection is reopened with
backoff and LISTEN re-issued; polling covers the gap, and the loop is poked once LISTEN
is back for the jobs enqueued meanwhile."""

from __future__ import annotations

from collections.abc import Callable, Collection

from psycopg import sql

from ..db.connection import TRANSIENT, Connector


async def listen(dsn: str, channel: str, queues: Collection[str],
                 poke: Callable[[], None]) -> None:
    """Call ``poke`` for every notification about one of ``queues``, until cancelled."""
    connector = Connector(dsn, "listen", prepare=False)
    statement = sql.SQL("LISTEN {}").format(sql.Identifier(channel))
    try:
        while True:
            try:
                conn = await connector.get()
                await conn.execute(statement)
                poke()  # jobs enqueued while we were not listening
                async for note in conn.notifies():
                    if note.payload in queues:
                        poke()
            except TRANSIENT as exc:
                await connector.backoff(exc)
    finally:
        await connector.close()
