"""A TAK server stand-in that negotiates TAK protocol as the spec describes (taky never does).

On each connection it sends the offer (``t-x-takp-v``), reads XML until the client's request
(``t-x-takp-q``), answers as told (accept, refuse or never) and from an accepted request on
reads protobuf stream frames. It answers pings in whatever the connection speaks, and records
every other event with the wire form it came in. A test double, written from the protocol text:
no real TAK Server (which does negotiate) can run here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from copbridge.cot import (
    StreamDeframer,
    format_time,
    parse_protobuf,
    ping_event,
    stream_frame,
    to_protobuf,
    to_xml,
)

Answer = Literal["accept", "refuse", "never"]
OFFER_UID = "protouid-7f3a"
_TYPE = re.compile(rb'type="([^"]+)"')
_UID = re.compile(rb'uid="([^"]+)"')


def control_event(kind: str, detail: str) -> bytes:
    now = datetime.now(UTC)
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<event version="2.0" uid="{OFFER_UID}" '
        f'type="{kind}" time="{format_time(now)}" start="{format_time(now)}" '
        f'stale="{format_time(now + timedelta(minutes=1))}" how="m-g">'
        '<point lat="0.0" lon="0.0" hae="0.0" ce="999999" le="999999"/>'
        f"<detail><TakControl>{detail}</TakControl></detail></event>"
    ).encode()


def _pong(*, protobuf: bool) -> bytes:
    pong = dataclasses.replace(ping_event(datetime.now(UTC), uid="takp-server"), type="t-x-c-t-r")
    return stream_frame(to_protobuf(pong)) if protobuf else to_xml(pong)


@dataclass
class Received:
    """One event a connection carried: its uid, type and how it came (xml or protobuf)."""

    uid: str
    type: str
    wire: Literal["xml", "protobuf"]


@dataclass
class TakProtocolServer:
    answer: Answer = "accept"
    offer: bool = True
    versions: tuple[int, ...] = (1,)
    received: list[Received] = field(default_factory=list)
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    _server: asyncio.Server | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def wait_for(self, uid: str, seconds: float) -> Received:
        async with asyncio.timeout(seconds):
            while True:
                for got in self.received:
                    if got.uid == uid:
                        return got
                self._changed.clear()
                await self._changed.wait()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.offer:
            support = "".join(f'<TakProtocolSupport version="{v}"/>' for v in self.versions)
            writer.write(control_event("t-x-takp-v", support))
        deframer: StreamDeframer | None = None  # set once protobuf was accepted
        buffer = b""
        with contextlib.suppress(OSError, ConnectionError):
            while chunk := await reader.read(1 << 16):
                if deframer is not None:
                    self._frames(deframer.feed(chunk), writer)
                    continue
                buffer += chunk
                while deframer is None and (end := buffer.find(b"</event>")) >= 0:
                    event, buffer = buffer[: end + 8], buffer[end + 8 :]
                    if self._xml_event(event, writer):
                        deframer = StreamDeframer()
                        self._frames(deframer.feed(buffer.lstrip()), writer)
                await writer.drain()
        writer.close()

    def _xml_event(self, event: bytes, writer: asyncio.StreamWriter) -> bool:
        """Handle one XML event; True when it was a request this server accepted."""
        kind = (m.group(1) if (m := _TYPE.search(event)) else b"").decode()
        if kind == "t-x-takp-q":
            self.requests.append(event)
            if self.answer != "never":
                status = "true" if self.answer == "accept" else "false"
                writer.write(control_event("t-x-takp-r", f'<TakResponse status="{status}"/>'))
            return self.answer == "accept"
        if kind == "t-x-c-t":
            writer.write(_pong(protobuf=False))
        else:
            uid = (m.group(1) if (m := _UID.search(event)) else b"").decode()
            self._record(Received(uid, kind, "xml"))
        return False

    def _frames(self, messages: list[bytes], writer: asyncio.StreamWriter) -> None:
        for message in messages:
            event = parse_protobuf(message)
            if event.type == "t-x-c-t":
                writer.write(_pong(protobuf=True))
            else:
                self._record(Received(event.uid, event.type, "protobuf"))

    def _record(self, got: Received) -> None:
        self.received.append(got)
        self._changed.set()
