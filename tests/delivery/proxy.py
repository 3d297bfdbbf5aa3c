"""A TCP proxy for fault drills: refuse new connections, or freeze live ones (half-open).

Frozen connections stay open at both ends but nothing is forwarded any more, like a link whose
far side vanished without a FIN or RST: the sender's writes still succeed into kernel buffers.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

HOST = "127.0.0.1"


@dataclass
class _Pair:
    writers: list[asyncio.StreamWriter]
    pumps: list[asyncio.Task[None]] = field(default_factory=list)


class FaultProxy:
    """Forwards ``HOST:port`` to an upstream address until told to misbehave."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.accepting = True
        self.connections = 0
        self._pairs: list[_Pair] = []
        self._server: asyncio.Server | None = None
        self._listen_port = 0

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._accept, HOST, port)

    async def refuse(self) -> None:
        """Stop listening: new connections are refused, as by a host whose server is down."""
        port = self.port
        assert self._server is not None
        self._server.close()
        await asyncio.wait_for(self._server.wait_closed(), 2)
        self._listen_port = port

    async def accept(self) -> None:
        """Listen again on the same port."""
        await self.start(self._listen_port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.accepting:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.upstream), 5
            )
        except (OSError, TimeoutError):
            writer.close()
            return
        self.connections += 1
        pair = _Pair([writer, up_writer])
        pair.pumps = [
            asyncio.create_task(self._pump(reader, up_writer, pair)),
            asyncio.create_task(self._pump(up_reader, writer, pair)),
        ]
        self._pairs.append(pair)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pair: _Pair
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        for w in pair.writers:  # one side closed: close the other, as a real path would
            w.close()

    def freeze(self) -> None:
        """Stop forwarding on every live connection, leaving both ends open (half-open)."""
        for pair in self._pairs:
            for pump in pair.pumps:
                pump.cancel()

    async def stop(self) -> None:
        self.freeze()
        for pair in self._pairs:
            for w in pair.writers:
                w.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
