"""TCP and TLS links to a TAK server, with a keepalive that notices a half-open connection.

TCP alone does not: writes to a peer that vanished keep succeeding until the send buffer fills.
So we ping (``t-x-c-t``) every ``keepalive_s`` and, once the peer has shown that it answers
pings, treat a ping unanswered for ``keepalive_s`` as a dead link; TCP keepalive and
``TCP_USER_TIMEOUT`` cover peers that never answer, and every drain is bounded by a timeout.

A destination configured for protobuf speaks it only after the server offered and accepted it
(``negotiation.py``); until then, and with a server that never offers, the link speaks XML.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from copbridge.delivery.destinations import Destination, WireProtocol
from copbridge.delivery.encoding import event_body, ping
from copbridge.delivery.negotiation import (
    ANSWER,
    ANSWER_WAIT_S,
    OFFER,
    VERSION,
    ControlScanner,
    NegotiationError,
    parse_answer,
    parse_offer,
    request,
)
from copbridge.delivery.tls import destination_context
from copbridge.delivery.transports import LinkError
from copbridge.logs import get_logger

_PONG = b"t-x-c-t-r"
_READ_CHUNK = 1 << 16
_log = get_logger(__name__)


def _tune_socket(sock: socket.socket, keepalive_s: float) -> None:
    """Let the kernel give up on an unreachable peer within about twice the keepalive."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", max(1, int(keepalive_s))),
        ("TCP_KEEPINTVL", max(1, int(keepalive_s / 3))),
        ("TCP_KEEPCNT", 3),
        ("TCP_USER_TIMEOUT", int(2 * keepalive_s * 1000)),
    ):
        option = getattr(socket, name, None)
        if option is not None:  # Linux has them all; other systems some
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


class StreamTransport:
    """One TCP or TLS connection; a reader task drains what the server sends and spots pongs."""

    def __init__(
        self,
        destination: Destination,
        *,
        ping_uid: str,
        expect_answer: bool,
        wake: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
        answer_wait_s: float = ANSWER_WAIT_S,
    ) -> None:
        self.destination = destination
        self.answers_pings = expect_answer
        self._protocol: WireProtocol = "xml"
        self._answer_wait_s = answer_wait_s
        # While negotiating: the scanner (it knows the kind awaited) and the first event of that
        # kind the reader found (one slot: a server repeating control events cannot make us
        # hold more).
        self._scanner: ControlScanner | None = None
        self._control: bytes | None = None
        self._control_seen = asyncio.Event()
        self._ping_uid = ping_uid
        self._wake = wake
        self._clock = clock
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._closed_reason: str | None = None
        # Unbounded on purpose: pongs are matched to pings in order, so none may be dropped; the
        # keepalive check ends the link before a silent peer lets this grow for long.
        self._pings: deque[float] = deque()
        self._last_ping = float("-inf")
        self._confirmed: float | None = None
        keepalive = destination.keepalive_s
        self._connect_timeout = max(2.0, min(10.0, 2 * keepalive))
        self._drain_timeout = max(2.0, 2 * keepalive)

    async def open(self) -> None:
        d = self.destination
        context: ssl.SSLContext | None = None
        server_hostname: str | None = None
        if d.scheme == "tls":
            try:
                context = destination_context(d)
            except (OSError, ValueError, ssl.SSLError) as exc:
                raise LinkError(f"TLS setup failed: {exc}") from exc
            server_hostname = d.expected_hostname or d.host
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    d.host, d.port, ssl=context, server_hostname=server_hostname
                ),
                self._connect_timeout,
            )
        except TimeoutError as exc:
            raise LinkError(f"connect timed out after {self._connect_timeout:g} s") from exc
        except ConnectionRefusedError as exc:  # nobody listens: the server there is gone
            raise LinkError(f"connect failed: {exc}", peer_gone=True) from exc
        except (OSError, ssl.SSLError) as exc:
            raise LinkError(f"connect failed: {exc}") from exc
        sock = writer.get_extra_info("socket")
        if sock is not None:
            _tune_socket(sock, d.keepalive_s)
        self._writer = writer
        # Before the reader starts: a server's offer comes first of all.
        scanner = self._scanner = ControlScanner(OFFER) if d.protocol == "protobuf" else None
        self._reader_task = asyncio.create_task(self._read(reader), name=f"read {d.name}")
        if scanner is not None:
            await self._negotiate(scanner)

    @property
    def protocol(self) -> WireProtocol:
        return self._protocol

    async def _negotiate(self, scanner: ControlScanner) -> None:
        """Wait for the server's offer; with version 1 in it, ask for it and wait for the
        answer. No offer, no version 1 or a refusal: the link speaks XML."""
        d = self.destination
        offer = None
        if (offered := await self._control_event(d.offer_wait_s)) is not None:
            try:
                offer = parse_offer(offered)
            except NegotiationError as exc:
                _log.warning("unreadable TAK protocol offer", destination=d.name, error=str(exc))
        if offer is None or VERSION not in offer.versions:
            self._scanner = None
            _log.warning(
                "the TAK server offered no TAK protocol version 1: sending XML",
                destination=d.name,
                offered=sorted(offer.versions) if offer else None,
                waited_s=d.offer_wait_s,
            )
            return
        scanner.kind, self._control = ANSWER, None  # an answer counts only after the request
        await self._write(event_body(request(offer, datetime.now(UTC))) + b"\n")
        answered = await self._control_event(self._answer_wait_s)
        self._scanner = None
        if answered is None:
            raise LinkError(
                f"no answer to the TAK protocol request within {self._answer_wait_s:g} s"
            )
        try:
            accepted = parse_answer(answered)
        except NegotiationError as exc:
            raise LinkError(f"unreadable answer to the TAK protocol request: {exc}") from exc
        if accepted:
            self._protocol = "protobuf"
            _log.info("speaking TAK protocol version 1 (protobuf)", destination=d.name)
        else:
            _log.warning(
                "the TAK server refused TAK protocol version 1: sending XML", destination=d.name
            )

    async def _control_event(self, seconds: float) -> bytes | None:
        """The first control event of the kind awaited that the server sends within
        ``seconds``; None if none came. Raises ``LinkError`` when the connection ends."""
        deadline = time.monotonic() + seconds
        while self._control is None:
            self._check()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._control_seen.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._control_seen.wait(), remaining)
        return self._control

    async def _read(self, reader: asyncio.StreamReader) -> None:
        tail = b""
        try:
            while chunk := await reader.read(_READ_CHUNK):
                if self._scanner is not None and (found := self._scanner.feed(chunk)):
                    if self._control is None:
                        self._control = found[0]
                    self._control_seen.set()
                window = tail + chunk
                pongs = window.count(_PONG)
                for _ in range(pongs):
                    self.answers_pings = True
                    if self._pings:
                        self._confirmed = self._pings.popleft()
                if pongs:
                    self._wake()  # writes waiting for this acknowledgement can be marked sent
                tail = window[-(len(_PONG) - 1) :]
            self._closed_reason = "the server closed the connection"
        except (OSError, ssl.SSLError) as exc:
            self._closed_reason = f"read failed: {exc}"
        finally:
            self._control_seen.set()
            self._wake()

    def _check(self) -> None:
        if self._closed_reason is not None:
            raise LinkError(self._closed_reason)
        if self._writer is None:
            raise LinkError("not connected")

    async def _write(self, data: bytes) -> None:
        self._check()
        assert self._writer is not None
        try:
            self._writer.write(data)
            await asyncio.wait_for(self._writer.drain(), self._drain_timeout)
        except TimeoutError as exc:
            raise LinkError(f"write stalled for {self._drain_timeout:g} s") from exc
        except (OSError, ssl.SSLError) as exc:
            raise LinkError(f"write failed: {exc}") from exc

    async def send(self, frames: Sequence[bytes]) -> None:
        await self._write(b"".join(frames))

    async def keepalive(self) -> None:
        self._check()
        now = self._clock()
        limit = self.destination.keepalive_s
        if self.answers_pings and self._pings and now - self._pings[0] > limit:
            raise LinkError(f"no answer to a keepalive ping within {limit:g} s (half-open link)")
        if now - self._last_ping >= limit:
            self._last_ping = now
            self._pings.append(now)
            await self._write(
                ping(self.destination, datetime.now(UTC), self._ping_uid, self._protocol)
            )

    def confirmed_at(self) -> float | None:
        return self._confirmed if self.answers_pings else None

    async def confirm(self, after: float) -> None:
        # TCP keeps order: the peer answers this ping only after reading everything before it.
        if self._pings and self._pings[-1] >= after:
            return
        self._check()
        now = self._clock()
        self._last_ping = now
        self._pings.append(now)
        await self._write(ping(self.destination, datetime.now(UTC), self._ping_uid, self._protocol))

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
