"""On a link whose peer answers pings, a row is marked sent only once a ping written after it is
answered: until then it stays leased in the store, so a crash or a silent peer sends it again."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from copbridge.config import DestinationSettings
from copbridge.delivery import DeliveryService
from copbridge.store import SqlStore

from .conftest import make_settings, poll_until, running
from .events import detection_record, queue
from .sink import CotSink

_PONG = (
    b'<?xml version="1.0"?><event version="2.0" uid="peer" type="t-x-c-t-r" how="h-g-i-g-o" '
    b'time="2026-01-01T00:00:00Z" start="2026-01-01T00:00:00Z" stale="2026-01-01T00:00:20Z">'
    b'<point lat="0" lon="0" hae="0" ce="9999999" le="9999999"/></event>'
)


KEEPALIVE_S = 1.0


class Peer:
    """A TAK-like server that reads everything and answers pings only while ``answering``."""

    def __init__(self) -> None:
        self.answering = True
        self.received = b""
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        with contextlib.suppress(OSError, ConnectionError):
            while chunk := await reader.read(1 << 16):
                self.received += chunk
                if self.answering:
                    for _ in range(chunk.count(b'type="t-x-c-t"')):
                        writer.write(_PONG)
                    await writer.drain()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def stop_now(self) -> None:
        """Stop listening and cut every connection (a server going away)."""
        self.close_listener()
        self.cut_connections()
        if self._server is not None:
            await self._server.wait_closed()

    def close_listener(self) -> None:
        if self._server is not None:
            self._server.close()

    def cut_connections(self) -> None:
        for writer in self._writers:
            writer.transport.abort()


def _delivery_to(peer: Peer, store: SqlStore, tmp_path: Path) -> tuple[str, DeliveryService]:
    url = f"tcp://127.0.0.1:{peer.port}"
    settings = make_settings(
        f"sqlite:///{tmp_path / 'unused.db'}",
        destinations=[DestinationSettings(url=url, keepalive_s=KEEPALIVE_S)],
    )
    return url, DeliveryService(settings, store)


async def _one_sent(store: SqlStore, service: DeliveryService, url: str) -> None:
    """A first row delivered and acknowledged: the courier now knows the peer answers pings."""
    queue(store, [url], [detection_record("before")])
    service.notify()
    await poll_until(lambda: store.outbox_stats([url])[0].sent == 1, 10)


async def test_rows_stay_leased_until_the_peer_acknowledges_them(
    sqlite_store: SqlStore, tmp_path: Path
) -> None:
    peer = Peer()
    await peer.start()
    url, service = _delivery_to(peer, sqlite_store, tmp_path)
    try:
        async with running(service):
            # While the peer answers, what it reads is acknowledged and marked sent.
            queue(sqlite_store, [url], [detection_record("t1")])
            service.notify()
            await poll_until(lambda: sqlite_store.outbox_stats([url])[0].sent == 1, 10)

            # The peer goes quiet (reads, never answers): the next row arrives on the wire but
            # is not acknowledged, so it must stay pending (leased), not be marked sent.
            peer.answering = False
            queue(sqlite_store, [url], [detection_record("t2")])
            service.notify()
            await poll_until(lambda: b"copbridge.uav-7.t2" in peer.received, 10)
            await asyncio.sleep(KEEPALIVE_S / 4)  # well inside the keepalive bound
            stats = sqlite_store.outbox_stats([url])[0]
            assert (stats.sent, stats.pending) == (1, 1)

            # Answering again: later pongs acknowledge it (or, past the keepalive bound, the
            # link is dropped and the row re-sent); either way every row ends up sent.
            peer.answering = True
            queue(sqlite_store, [url], [detection_record("t3")])
            service.notify()
            await poll_until(lambda: sqlite_store.outbox_stats([url])[0].sent == 3, 10)
    finally:
        await peer.stop()


async def test_a_server_replaced_by_one_that_never_answers_pings_is_delivered_to(
    sqlite_store: SqlStore, tmp_path: Path
) -> None:
    """The courier remembered that the destination answered pings: the replacement (a plain
    CoT input, or another server after a failover) had every link cut as half-open after the
    keepalive bound, the same rows sent again and again and none ever marked sent."""
    first = Peer()
    await first.start()
    url, service = _delivery_to(first, sqlite_store, tmp_path)
    replacement = CotSink()
    try:
        async with running(service):
            await _one_sent(sqlite_store, service, url)
            await first.stop_now()
            # Nothing listens there for a moment: a connection is refused.
            await poll_until(
                lambda: "connect failed" in (service.monitor.state(url).last_error or ""), 10
            )
            await replacement.start(first.port)  # the same address; it never answers pings
            queue(sqlite_store, [url], [detection_record(f"after-{i}") for i in range(3)])
            service.notify()
            await poll_until(lambda: sqlite_store.outbox_stats([url])[0].sent == 4, 15)
            await asyncio.sleep(4 * KEEPALIVE_S)  # past the half-open bound, several times
            assert sqlite_store.outbox_stats([url])[0].pending == 0
            assert len(replacement.connections) == 1  # one link, never cut
            assert sorted(replacement.uids()) == [f"copbridge.uav-7.after-{i}" for i in range(3)]
    finally:
        await first.stop()
        await replacement.stop()


class _ProxyOfADeadServer:
    """Accepts connections and swallows what they carry, never answering (a proxy whose server
    behind it died, looking for another); ``cut`` closes every connection it holds."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []
        self.received = b""
        self._server: asyncio.Server | None = None

    async def start(self, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        with contextlib.suppress(OSError, ConnectionError):
            while chunk := await reader.read(1 << 16):
                self.received += chunk

    def cut(self) -> None:
        for writer in self.writers:
            writer.close()

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()


async def test_rows_written_to_a_proxy_whose_server_died_stay_leased(
    sqlite_store: SqlStore, tmp_path: Path
) -> None:
    """A close (the proxy ending its side when the server behind it died) must not make the
    courier forget that the destination answers pings: what it writes into the proxy's next
    connection, which nobody reads, would be marked sent and lost (a review finding against
    a version that forgot on a close)."""
    peer = Peer()
    await peer.start()
    url, service = _delivery_to(peer, sqlite_store, tmp_path)
    proxy = _ProxyOfADeadServer()
    try:
        async with running(service):
            await _one_sent(sqlite_store, service, url)
            # The proxy takes the address over at once (no moment without a listener)...
            peer.close_listener()
            await proxy.start(peer.port)
            peer.cut_connections()  # ...and closes the link the courier had
            queue(sqlite_store, [url], [detection_record("into-the-proxy")])
            service.notify()
            await poll_until(lambda: b"into-the-proxy" in proxy.received, 10)
            await asyncio.sleep(3 * KEEPALIVE_S)
            proxy.cut()
            await asyncio.sleep(KEEPALIVE_S)
            stats = sqlite_store.outbox_stats([url])[0]
            assert (stats.sent, stats.pending) == (1, 1)  # not marked sent: nobody took it
    finally:
        await peer.stop()
        await proxy.stop()
