"""A plain TCP receiver that records every CoT event per connection (a stand-in TAK peer)."""

from __future__ import annotations

import asyncio
import contextlib
import re

_UID = re.compile(rb'uid="([^"]+)"')


class CotSink:
    """Listens on loopback; each connection's ``<event>``s are kept in arrival order."""

    def __init__(self) -> None:
        self.connections: list[list[bytes]] = []
        self._server: asyncio.Server | None = None
        self._changed = asyncio.Event()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        events: list[bytes] = []
        self.connections.append(events)
        buffer = b""
        with contextlib.suppress(OSError):
            while chunk := await reader.read(1 << 16):
                buffer += chunk
                while (end := buffer.find(b"</event>")) >= 0:
                    event, buffer = buffer[: end + 8], buffer[end + 8 :]
                    if b't-x-c-t"' not in event:
                        events.append(event.strip())
                self._changed.set()
        writer.close()

    def uids(self) -> list[str]:
        return [
            m.group(1).decode()
            for events in self.connections
            for e in events
            if (m := _UID.search(e))
        ]

    async def wait_count(self, count: int, seconds: float) -> None:
        async with asyncio.timeout(seconds):
            while len(self.uids()) < count:
                self._changed.clear()
                await self._changed.wait()
