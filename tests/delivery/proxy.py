"""A TCP proxy for fault drills: refuse, freeze (half-open), black-hole, reset, delay.

Frozen connections stay open at both ends but nothing is forwarded any more, like a link whose
far side vanished without a FIN or RST: the sender's writes still succeed into kernel buffers.
A black hole does the same to new connections too, until it is healed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
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
        self.delay_s = 0.0  # added before each forwarded chunk
        self._black_hole = False
        self._held: list[asyncio.StreamWriter] = []
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
        if self._black_hole:  # accepted, never read, never forwarded
            self._held.append(writer)
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
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                writer.write(data)
                await writer.drain()
        for w in pair.writers:  # one side closed: close the other, as a real path would
            w.close()

    def freeze(self) -> None:
        """Stop forwarding on every live connection, leaving both ends open (half-open)."""
        for pair in self._pairs:
            for pump in pair.pumps:
                pump.cancel()

    def black_hole(self) -> None:
        """Freeze live connections and swallow new ones: a path that silently eats everything."""
        self._black_hole = True
        self.freeze()

    def heal(self) -> None:
        """End a black hole: swallowed connections are reset, new ones are forwarded again."""
        self._black_hole = False
        held, self._held = self._held, []
        for writer in held:
            _reset(writer)

    def reset(self) -> None:
        """Abort every live connection with a TCP RST at both ends."""
        for pair in self._pairs:
            for pump in pair.pumps:
                pump.cancel()
            for w in pair.writers:
                _reset(w)
        self._pairs.clear()

    async def stop(self) -> None:
        self.heal()
        self.freeze()
        for pair in self._pairs:
            for w in pair.writers:
                w.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:  # linger 0: close() sends RST instead of FIN
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
