"""What a destination link can do, whatever carries it: open, send frames, keep alive, close.

Streams (TCP/TLS) live in ``stream.py``; UDP, files and the log in ``datagram.py`` and
``local.py``. ``open_transport`` picks one for a destination.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from copbridge.delivery.destinations import Destination, WireProtocol


class LinkError(Exception):
    """The link cannot carry events now (refused, closed, silent, stalled); reconnect later.

    ``peer_gone``: nothing listens at the address (the connection was refused): whatever
    answers there next may be another server. A close or a reset does not say as much: a proxy
    in front closes its side when the server behind it dies, then accepts new connections
    while it looks for one."""

    def __init__(self, message: str, *, peer_gone: bool = False) -> None:
        super().__init__(message)
        self.peer_gone = peer_gone


class Transport(Protocol):
    """One open link to one destination. Every wait inside is bounded in time."""

    @property
    def protocol(self) -> WireProtocol:
        """What the link speaks now (a stream: XML until the server accepted protobuf)."""
        ...

    async def open(self) -> None: ...

    async def send(self, frames: Sequence[bytes]) -> None:
        """Write and drain the frames; raise ``LinkError`` when the link fails."""
        ...

    async def keepalive(self) -> None:
        """Send a ping when one is due; raise ``LinkError`` when the peer is known to be gone."""
        ...

    def confirmed_at(self) -> float | None:
        """Monotonic time before which every write is known to have arrived (None: unknown)."""
        ...

    async def confirm(self, after: float) -> None:
        """Ask the peer to acknowledge every write made up to ``after`` (a ping behind them);
        a no-op for links that never acknowledge."""
        ...

    async def close(self) -> None: ...


class Unacknowledged:
    """For links that never answer (UDP, files, the log): no keepalive, nothing confirmed."""

    destination: Destination

    @property
    def protocol(self) -> WireProtocol:
        return self.destination.protocol  # nothing to negotiate: what is configured

    async def keepalive(self) -> None:
        return None

    def confirmed_at(self) -> float | None:
        return None

    async def confirm(self, after: float) -> None:
        return None


def open_transport(
    destination: Destination, *, ping_uid: str, expect_answer: bool, wake: Callable[[], None]
) -> Transport:
    """A transport for ``destination`` (not opened yet)."""
    if destination.is_stream:
        from copbridge.delivery.stream import StreamTransport

        return StreamTransport(
            destination, ping_uid=ping_uid, expect_answer=expect_answer, wake=wake
        )
    if destination.scheme == "udp":
        from copbridge.delivery.datagram import DatagramTransport

        return DatagramTransport(destination)
    from copbridge.delivery.local import FileTransport, LogTransport

    if destination.scheme == "file":
        return FileTransport(destination)
    return LogTransport(destination)
