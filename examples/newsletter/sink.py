"""Senders for the newsletter example: the interface, and a local sink that stands in
for an email provider.

A sender is anything with ``send(message)``. Plug in your own (SMTP, a provider's HTTP
API) by returning it from ``sender()`` in newsletter.py; pass ``message.idempotency_key`` on to the
provider (an ``Idempotency-Key`` header, or a Message-ID it deduplicates on) so that a
delivery job that runs twice does not mail twice.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Protocol

from psycopg_pool import ConnectionPool


@dataclass(frozen=True)
class Message:
    idempotency_key: str
    to: str
    subject: str
    body: str
    tag: str


class Sender(Protocol):
    def send(self, message: Message) -> None: ...


ACCEPT = """
INSERT INTO mailsink.messages (idempotency_key, recipient, subject, body, tag)
VALUES (%(idempotency_key)s, %(to)s, %(subject)s, %(body)s, %(tag)s)
ON CONFLICT (idempotency_key) DO UPDATE SET sends = messages.sends + 1
"""


class SinkSender:
    """Records each message in ``mailsink.messages``, keyed by its idempotency key, on
    connections of its own: like a provider's API, a send is committed on its side
    whatever happens to the job afterwards. ``latency`` (seconds) imitates the round
    trip to a real provider."""

    def __init__(self, dsn: str, *, latency: float = 0.0, max_connections: int = 10) -> None:
        self.latency = latency
        self.pool = ConnectionPool(
            dsn, min_size=1, max_size=max_connections, kwargs={"autocommit": True},
            name="mailsink", open=True,
        )

    def send(self, message: Message) -> None:
        if self.latency:
            time.sleep(self.latency)
        with self.pool.connection() as conn:
            conn.execute(ACCEPT, asdict(message))

    def close(self) -> None:
        self.pool.close()
