"""A TCP proxy between workers and PostgreSQL that can black-hole or reset the link.

It runs its own asyncio loop in a background thread, so tests drive it from plain
synchronous code:

    proxy = Proxy("127.0.0.1", 5432).start()
    dsn = proxy.dsn(real_dsn)        # the same DSN, through the proxy
    proxy.blackhole()                # hold every byte, both ways (a partition)
    proxy.blackhole("down")          # hold only server -> client (replies vanish)
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


class Proxy:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.accepted = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="chaos-proxy")
        self._server: asyncio.Server | None = None
        self._flow: dict[str, asyncio.Event] = {}
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()

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

    def blackhole(self, direction: str = "both") -> None:
        """Stop forwarding: ``both`` ways, or only ``up`` or ``down``."""
        held = DIRECTIONS if direction == "both" else (direction,)
        assert all(d in DIRECTIONS for d in held), direction
        self._call(self._set_flow(held, flowing=False))

    def heal(self) -> None:
        self._call(self._set_flow(DIRECTIONS, flowing=True))

    def reset(self) -> int:
        """Abort every open connection with a TCP reset; returns how many."""
        return self._call(self._reset())

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
        self._flow = {d: asyncio.Event() for d in DIRECTIONS}
        for event in self._flow.values():
            event.set()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _set_flow(self, directions: tuple[str, ...], flowing: bool) -> None:
        for d in directions:
            (self._flow[d].set if flowing else self._flow[d].clear)()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            _abort(client_w)
            return
        link = (client_w, server_w)
        self._links.add(link)
        try:
            await asyncio.gather(
                self._pump(client_r, server_w, "up"),
                self._pump(server_r, client_w, "down"),
                return_exceptions=True,
            )
        finally:
            self._links.discard(link)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    direction: str) -> None:
        try:
            while data := await reader.read(65536):
                await self._flow[direction].wait()
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
        for client_w, server_w in links:
            _abort(client_w)
            _abort(server_w)
        return len(links)

    async def _close(self) -> None:
        await self._set_flow(DIRECTIONS, flowing=True)
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
