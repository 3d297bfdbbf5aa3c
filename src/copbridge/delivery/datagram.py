"""UDP destinations: one event per datagram, unicast or multicast (the ATAK mesh, 239.2.3.1:6969).

UDP has no connection to lose, so there is no keepalive; sending is fire-and-forget by nature,
except that on unicast the kernel reports an ICMP "port unreachable" for an earlier datagram:
nobody listens there, so the link counts as failed and what went out lately is sent again once it
is back (the courier's re-send window). Multicast gets no such word.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence

from copbridge.delivery.destinations import Destination
from copbridge.delivery.transports import LinkError, Unacknowledged
from copbridge.logs import get_logger

_log = get_logger("copbridge.delivery")
_MAX_DATAGRAM = 65_507
_MULTICAST_TTL = 1  # the local network only, like ATAK's own mesh traffic


class _Sender(asyncio.DatagramProtocol):
    """Flow control from the loop (pause/resume writing) and nothing else: UDP has no replies."""

    def __init__(self) -> None:
        self.writable = asyncio.Event()
        self.writable.set()
        self.refused: Exception | None = None

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def error_received(self, exc: Exception) -> None:
        # ICMP "port unreachable" (or another error) for an earlier datagram: nobody listens.
        _log.debug("udp error", error=str(exc))
        self.refused = exc

    def raise_refused(self) -> None:
        exc, self.refused = self.refused, None
        if exc is not None:
            raise LinkError(f"nobody receives there: {exc}")


class DatagramTransport(Unacknowledged):
    """A UDP socket aimed at one address; multicast gets a TTL and loopback to local listeners."""

    def __init__(self, destination: Destination) -> None:
        self.destination = destination
        self._transport: asyncio.DatagramTransport | None = None
        self._protocol = _Sender()

    async def open(self) -> None:
        d = self.destination
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: self._protocol, remote_addr=(d.host, d.port)
            )
        except OSError as exc:
            raise LinkError(f"cannot open UDP socket: {exc}") from exc
        sock = transport.get_extra_info("socket")
        if d.is_multicast and sock is not None and sock.family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, _MULTICAST_TTL)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        self._transport = transport

    async def keepalive(self) -> None:
        self._protocol.raise_refused()

    async def send(self, frames: Sequence[bytes]) -> None:
        if self._transport is None or self._transport.is_closing():
            raise LinkError("UDP socket is closed")
        self._protocol.raise_refused()
        for frame in frames:
            if len(frame) > _MAX_DATAGRAM:
                _log.warning("event too large for one datagram", size=len(frame))
                continue
            if not self._protocol.writable.is_set():
                try:
                    await asyncio.wait_for(self._protocol.writable.wait(), 5.0)
                except TimeoutError as exc:
                    raise LinkError("UDP socket stayed full for 5 s") from exc
            self._transport.sendto(frame)

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
