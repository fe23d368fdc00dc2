"""A TCP proxy between workers and PostgreSQL that can black-hole or reset the link.

It runs its own asyncio loop in a background thread, so tests drive it from plain
synchronous code:

    proxy = Proxy("127.0.0.1", 5432).start()
    dsn = proxy.dsn(real_dsn)        # the same DSN, through the proxy
    proxy.blackhole()                # hold every byte, both ways (a partition)
    proxy.blackhole("down")          # hold only server -> client (replies vanish)
    proxy.blackhole("down", app="pgjobs-claim")  # only connections with that
                                     # application_name (read from the startup packet)
    proxy.heal()                     # deliver what was held, then forward again
    proxy.reset()                    # RST every connection, like a long partition's end

A black hole holds data instead of dropping it: TCP retransmits across a partition, so a
link that heals before the connection times out delivers everything late, in order. New
connections are accepted during a black hole and hang like the old ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any

from psycopg.conninfo import conninfo_to_dict, make_conninfo

DIRECTIONS = ("up", "down")  # up: client -> server, down: server -> client
APP_KEY = b"application_name\x00"


class Link:
    """One proxied connection."""

    def __init__(self, client: asyncio.StreamWriter, server: asyncio.StreamWriter) -> None:
        self.client, self.server = client, server
        self.app: str | None = None  # application_name, once the startup packet is seen
        self._head = b""

    def sniff(self, data: bytes) -> None:
        """Find application_name in the startup packet (the client's first message, after
        an optional SSLRequest)."""
        if self.app is not None or len(self._head) > 8192:
            return
        self._head += data
        at = self._head.find(APP_KEY)
        if at >= 0:
            end = self._head.find(b"\x00", at + len(APP_KEY))
            if end >= 0:
                self.app = self._head[at + len(APP_KEY):end].decode(errors="replace")


class Proxy:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="chaos-proxy")
        self._server: asyncio.Server | None = None
        self._held: frozenset[str] = frozenset()
        self._only: str | None = None
        self._changed: asyncio.Event | None = None
        self._links: set[Link] = set()

    @classmethod
    def to(cls, dsn: str) -> Proxy:
        params = conninfo_to_dict(dsn)
        return cls(str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432))

    def dsn(self, dsn: str) -> str:
        """``dsn`` pointed at this proxy."""
        return make_conninfo(dsn, host="127.0.0.1", port=self.port)

    # -- control (from the test's thread) -------------------------------------------------

    def start(self) -> Proxy:
        self._thread.start()
        self._call(self._start())
        return self

    def blackhole(self, direction: str = "both", app: str | None = None) -> None:
        """Stop forwarding ``both`` ways, or only ``up`` or ``down``; with ``app``, only on
        connections whose application_name starts with it."""
        held = DIRECTIONS if direction == "both" else (direction,)
        assert all(d in DIRECTIONS for d in held), direction
        self._call(self._set(frozenset(held), app))

    def heal(self) -> None:
        self._call(self._set(frozenset(), None))

    def reset(self) -> int:
        """Abort every open connection with a TCP reset; returns how many."""
        return int(self._call(self._reset()))

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    # -- the loop's side --------------------------------------------------------------

    async def _start(self) -> None:
        self._changed = asyncio.Event()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _set(self, held: frozenset[str], only: str | None) -> None:
        self._held, self._only = held, only
        assert self._changed is not None
        self._changed.set()  # wake every held pump to look again
        self._changed = asyncio.Event()

    def _holds(self, link: Link, direction: str) -> bool:
        if direction not in self._held:
            return False
        return self._only is None or (link.app or "").startswith(self._only)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            _abort(client_w)
            return
        link = Link(client_w, server_w)
        self._links.add(link)
        try:
            await asyncio.gather(
                self._pump(link, client_r, server_w, "up"),
                self._pump(link, server_r, client_w, "down"),
                return_exceptions=True,
            )
        finally:
            self._links.discard(link)

    async def _pump(self, link: Link, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter, direction: str) -> None:
        try:
            while data := await reader.read(65536):
                if direction == "up":
                    link.sniff(data)
                while self._holds(link, direction):
                    assert self._changed is not None
                    await self._changed.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            # One side ended: end the other, as a real connection would.
            with contextlib.suppress(Exception):
                writer.close()

    async def _reset(self) -> int:
        links = list(self._links)
        for link in links:
            _abort(link.client)
            _abort(link.server)
        return len(links)

    async def _close(self) -> None:
        await self._set(frozenset(), None)
        await self._reset()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a reset (RST), not an orderly FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
