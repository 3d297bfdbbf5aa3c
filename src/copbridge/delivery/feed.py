"""The built-in CoT feed: TAK clients connect straight to copbridge and receive events.

On connect a client gets every current non-stale event (the newest per uid), then live events as
they are stored. Read-only: whatever a client sends is read and dropped, except that a ping
(``t-x-c-t``) gets its pong so ATAK keeps the connection open.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from copbridge.config import Settings
from copbridge.cot import format_time
from copbridge.delivery.encoding import event_body
from copbridge.delivery.tls import server_context
from copbridge.logs import get_logger
from copbridge.metrics import FEED_CLIENTS
from copbridge.store import FeedEvent, Store

_log = get_logger("copbridge.feed")
_PING = b'type="t-x-c-t"'
_QUEUE = 10_000  # a client further behind than this is dropped; it reconnects to a fresh replay
_WRITE_TIMEOUT_S = 30.0
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets the connection
_REPLAY_CHUNK = 256
"""Replayed events written per drain: a client that stops reading holds at most this many in
our buffer (the whole replay in one write held a copy of the picture per client, 25 MB each)."""
_PAGE = 1000
_HOLE_WAIT_S = 60.0
"""How long a skipped sequence number is looked for again. On PostgreSQL a number is handed out
before its transaction commits, so another replica's event can land below the pump's cursor a
moment later; a number still missing after this long belonged to a transaction that rolled
back (writes end within the silence limit, 35 s by default)."""
_MAX_HOLES = 10_000
_PRUNE_AT = 4096  # uids a client's memory of sent events holds before stale ones are dropped
_START_BACK_S = 60.0
_HOLES_EVERY_S = 0.5  # looked for at most this often: a rolled-back batch leaves 1,000 holes


@dataclass(frozen=True, slots=True)
class FeedAddress:
    scheme: str
    host: str
    port: int


def _end(writer: asyncio.StreamWriter, *, abort: bool = False) -> None:
    """Close a client's connection; abort it when it is dropped for not reading (``abort``)
    or bytes are still unsent. ``close()`` keeps the socket, and our buffer, until they are
    flushed: a client that stopped reading (a phone gone half-open over a radio) held both
    until TCP gave up, minutes later."""
    if abort or writer.transport.get_write_buffer_size() > 0:
        sock = writer.get_extra_info("socket")
        if sock is not None:  # a reset, and the kernel's queue dropped too, not sent on later
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        writer.transport.abort()
    else:
        writer.close()


def parse_feed(url: str) -> FeedAddress | None:
    """``tcp://host:port`` or ``tls://host:port``; ``off`` gives None."""
    if url.strip().lower() == "off":
        return None
    parts = urlsplit(url.strip())
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"feed {url!r}: {exc}") from None
    if parts.scheme not in ("tcp", "tls") or not parts.hostname or port is None:
        raise ValueError(f"feed {url!r}: use tcp://host:port, tls://host:port or off")
    return FeedAddress(parts.scheme, parts.hostname, port)


def _pong() -> bytes:
    now = datetime.now(UTC)
    stale = now + timedelta(seconds=20)
    return (
        f'<event version="2.0" uid="takPong" type="t-x-c-t-r" how="h-g-i-g-o" '
        f'time="{format_time(now)}" start="{format_time(now)}" stale="{format_time(stale)}">'
        f'<point lat="0.0" lon="0.0" hae="0.0" ce="9999999.0" le="9999999.0"/><detail/></event>\n'
    ).encode()


class _Client:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.queue: asyncio.Queue[bytes | FeedEvent | None] = asyncio.Queue(_QUEUE)
        # Per uid, the newest event this client was sent: (time, seq, stale). The order is the
        # outbox's (time, then seq): a late detection with an older time, an event numbered
        # below a replayed one that committed after the replay (PostgreSQL numbers before
        # commit) or the replay's own events coming again from the pump are not sent, so a
        # marker never jumps back to an older position.
        self.newest: dict[str, tuple[int, int, int]] = {}
        self._prune_at = _PRUNE_AT

    def replayed(self, events: Sequence[FeedEvent]) -> None:
        for event in events:
            self.newest[event.uid] = (event.time_us, event.seq, event.stale_us)
        self._prune_at = max(_PRUNE_AT, 2 * len(self.newest))

    def fresh(self, event: FeedEvent) -> bool:
        """Whether an event is current and newer than what this client has for its uid."""
        now_us = time.time_ns() // 1000
        if event.stale_us <= now_us:
            return False
        known = self.newest.get(event.uid)
        if known is not None and (event.time_us, event.seq) <= known[:2]:
            return False
        self.newest[event.uid] = (event.time_us, event.seq, event.stale_us)
        if len(self.newest) > self._prune_at:  # forget uids gone stale: their markers are gone
            self.newest = {u: k for u, k in self.newest.items() if k[2] > now_us}
            self._prune_at = max(_PRUNE_AT, 2 * len(self.newest))
        return True

    def offer(self, item: bytes | FeedEvent | None) -> bool:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            return False
        return True


@dataclass(frozen=True, slots=True)
class FeedTls:
    """The feed's TLS files (``COPBRIDGE_FEED_CERT``, ``_KEY``, ``_PASSWORD``, ``_CA_FILE``)."""

    cert: Path | None = None
    key: Path | None = None
    password: str | None = None
    client_ca: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> FeedTls:
        password = settings.feed_password
        return cls(
            settings.feed_cert,
            settings.feed_key,
            password.get_secret_value() if password else None,
            settings.feed_ca_file,
        )

    @property
    def any_set(self) -> bool:
        return bool(self.cert or self.key or self.client_ca)

    def context(self) -> ssl.SSLContext:
        """The server context a ``tls://`` feed listens with, loaded from the files now."""
        if self.cert is None:
            raise ValueError("a tls:// feed needs COPBRIDGE_FEED_CERT (and usually _KEY)")
        return server_context(
            cert=self.cert, key=self.key, password=self.password, client_ca=self.client_ca
        )


class CotFeed:
    """A TCP (or TLS) server that streams stored CoT events to every connected client."""

    def __init__(
        self,
        store: Store,
        address: FeedAddress,
        *,
        poll_s: float = 1.0,
        tls: FeedTls = FeedTls(),
    ) -> None:
        self._store = store
        self._address = address
        self._poll_s = poll_s
        self._tls = tls
        self._clients: set[_Client] = set()
        self._cursor = 0
        self._holes: dict[int, float] = {}  # skipped seq -> when it was first missed
        self._holes_looked = 0.0
        self._wake = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._pump: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._serving: set[asyncio.Task[Any]] = set()  # one per connected client's handler

    @property
    def port(self) -> int:
        """The port listened on (useful when configured as 0)."""
        if self._server is None or not self._server.sockets:
            return self._address.port
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def clients(self) -> int:
        return len(self._clients)

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        context = self._tls.context() if self._address.scheme == "tls" else None
        # Start a minute back: on PostgreSQL another replica's event can commit below the
        # newest number (numbers are handed out before commit, writes end within the silence
        # limit, 35 s by default); the pump notes such holes from here on. Clients skip what
        # they already have, so reading that minute again sends nobody anything twice.
        back_us = time.time_ns() // 1000 - int(_START_BACK_S * 1e6)
        self._cursor = await asyncio.to_thread(self._store.last_event_seq, back_us)
        self._server = await asyncio.start_server(
            self._serve, self._address.host, self._address.port, ssl=context
        )
        self._pump = asyncio.create_task(self._run_pump(), name="feed pump")
        _log.info(
            "feed listening", url=f"{self._address.scheme}://{self._address.host}:{self.port}"
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._pump is not None:
            self._pump.cancel()
        for client in list(self._clients):
            self._drop(client)  # its connection's handler ends now, not cancelled at exit
        if self._serving:
            # A handler cancelled by the loop's end is logged by asyncio as an error, with a
            # traceback, once per client connected at shutdown.
            await asyncio.wait(self._serving, timeout=2.0)
        tasks = [t for t in (self._pump, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def _run_pump(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_s)
            self._wake.clear()
            try:
                while True:
                    # Stale ones too (each client skips them): a stale event left out would
                    # look like a sequence number not committed yet.
                    events = await asyncio.to_thread(self._store.feed_since, self._cursor, 0, _PAGE)
                    self._note_holes(events)
                    self._broadcast(events)
                    if len(events) < _PAGE:
                        break
                if self._holes and time.monotonic() - self._holes_looked >= _HOLES_EVERY_S:
                    self._holes_looked = time.monotonic()
                    await self._fill_holes()
            except Exception as exc:  # the store may be down a moment; the next poll retries
                _log.warning("feed cannot read events", error=str(exc))

    def _note_holes(self, events: Sequence[FeedEvent]) -> None:
        expected, now = self._cursor + 1, time.monotonic()
        for event in events:
            for missing in range(expected, min(event.seq, expected + _MAX_HOLES)):
                if len(self._holes) < _MAX_HOLES:
                    self._holes.setdefault(missing, now)
            expected = max(expected, event.seq + 1)

    async def _fill_holes(self) -> None:
        """Send the events that committed below the cursor since it passed them."""
        now = time.monotonic()
        for seq in [s for s, since in self._holes.items() if now - since > _HOLE_WAIT_S]:
            del self._holes[seq]  # rolled back: it will never come
        if not self._holes:
            return
        late = await asyncio.to_thread(self._store.feed_events, sorted(self._holes))
        for event in late:
            self._holes.pop(event.seq, None)
        # The cursor passed them before they committed; each client sends those it has nothing
        # newer for.
        self._offer_all(late)

    def _broadcast(self, events: Sequence[FeedEvent]) -> None:
        if not events:
            return
        self._cursor = max(self._cursor, events[-1].seq)
        self._offer_all(events)

    def _offer_all(self, items: Sequence[bytes | FeedEvent]) -> None:
        for client in list(self._clients):
            if not all(client.offer(item) for item in items):
                _log.warning("feed client too slow; dropped")
                self._drop(client, abort=True)

    def _drop(self, client: _Client, *, abort: bool = False) -> None:
        self._clients.discard(client)
        _end(client.writer, abort=abort)
        with contextlib.suppress(asyncio.QueueFull):
            client.queue.put_nowait(None)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = _Client(writer)
        peer = writer.get_extra_info("peername")
        serving = asyncio.current_task()
        if serving is not None:
            self._serving.add(serving)
        # Registered before the replay is read, so nothing stored meanwhile falls in between.
        self._clients.add(client)
        FEED_CLIENTS.inc()
        listener = self._spawn(self._listen(reader, client), f"feed read {peer}")
        failed = False  # it stopped taking what we write: its connection is aborted
        try:
            snapshot = await asyncio.to_thread(self._store.feed_snapshot, time.time_ns() // 1000)
            client.replayed(snapshot)
            for start in range(0, len(snapshot), _REPLAY_CHUNK):
                chunk = snapshot[start : start + _REPLAY_CHUNK]
                await self._write(writer, b"".join(event_body(e.payload) + b"\n" for e in chunk))
            _log.info("feed client connected", peer=str(peer), replayed=len(snapshot))
            del snapshot
            while (item := await client.queue.get()) is not None and client in self._clients:
                if isinstance(item, bytes):  # a pong
                    await self._write(writer, item)
                elif client.fresh(item):
                    await self._write(writer, event_body(item.payload) + b"\n")
        except (OSError, TimeoutError) as exc:
            _log.info("feed client gone", peer=str(peer), error=str(exc))
            failed = True
        finally:
            if serving is not None:
                self._serving.discard(serving)
            self._clients.discard(client)
            FEED_CLIENTS.dec()
            listener.cancel()
            _end(writer, abort=failed)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        """Write and wait for the client to take it; one that reads nothing for
        ``_WRITE_TIMEOUT_S`` raises TimeoutError (the client is then ended)."""
        if data:
            writer.write(data)
            await asyncio.wait_for(writer.drain(), _WRITE_TIMEOUT_S)

    async def _listen(self, reader: asyncio.StreamReader, client: _Client) -> None:
        """Read and drop what the client sends; answer its pings; end the client on EOF."""
        tail = b""
        with contextlib.suppress(OSError):
            while chunk := await reader.read(1 << 16):
                window = tail + chunk
                for _ in range(window.count(_PING)):
                    client.offer(_pong())
                tail = window[-(len(_PING) - 1) :]
        self._drop(client)
