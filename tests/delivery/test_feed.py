"""The built-in feed: a TAK client connecting to copbridge gets the current events replayed, then
live ones; what it sends is ignored (pings get a pong); over TLS it must show a certificate."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from copbridge.cot import parse_xml
from copbridge.delivery import DeliveryService
from copbridge.store import DetectionRecord, SqlStore, open_store
from tests.cot.taky_server import CotClient

from .conftest import make_settings, poll_until, running
from .events import detection_record, has_uid, queue, uid_of
from .taky import make_tls_site

pytestmark = pytest.mark.timeout(30)


async def test_client_gets_newest_current_events_then_live_ones_and_cannot_write(
    sqlite_store: SqlStore, sqlite_url: str
) -> None:
    base = datetime.now(UTC)
    old_a = detection_record("a", at=base - timedelta(seconds=2))
    new_a = detection_record("a", at=base - timedelta(seconds=1))
    b = detection_record("b")
    gone = detection_record("gone", stale_s=0.05)
    queue(sqlite_store, [], [old_a, new_a, b, gone])
    await asyncio.sleep(0.1)
    settings = make_settings(sqlite_url, feed="tcp://127.0.0.1:0")
    async with running(DeliveryService(settings, sqlite_store)) as service:
        assert service.feed is not None
        client = CotClient("127.0.0.1", service.feed.port)
        try:
            replay = [
                await asyncio.to_thread(client.wait_for, has_uid(uid_of(r)), 5) for r in (new_a, b)
            ]
            assert parse_xml(replay[0]).time == parse_xml(new_a.cot_xml).time
            live = detection_record("c")
            queue(sqlite_store, [], [live])
            service.notify()
            await asyncio.to_thread(client.wait_for, has_uid(uid_of(live)), 5)
            # read-only: an event sent by the client is not stored; a ping is answered
            client.send(detection_record("from-client").cot_xml)
            await asyncio.to_thread(client.registered, "feed-client", datetime.now(UTC))
            await asyncio.sleep(0.3)
            assert all(b"from-client" not in e and b"gone" not in e for e in client.received)
            assert not any(b"t-x-c-t" not in e for e in client.received), "replayed twice"
        finally:
            client.close()
    stored = {e.uid for e in sqlite_store.feed_snapshot(time.time_ns() // 1000)}
    assert stored == {uid_of(new_a), uid_of(b), uid_of(live)}


async def test_stopping_with_clients_connected_ends_their_handlers(
    sqlite_store: SqlStore, sqlite_url: str
) -> None:
    """Before, a connected client's handler was left waiting and cancelled when the loop
    ended, which asyncio logs as an error with a traceback, one per client, at every stop."""
    settings = make_settings(sqlite_url, feed="tcp://127.0.0.1:0")
    clients: list[CotClient] = []
    async with running(DeliveryService(settings, sqlite_store)) as service:
        assert service.feed is not None
        clients += [CotClient("127.0.0.1", service.feed.port) for _ in range(2)]
        await asyncio.to_thread(clients[1].registered, "feed-client", datetime.now(UTC))
    try:
        left = [t for t in asyncio.all_tasks() if "_serve" in repr(t.get_coro())]
        assert left == []
    finally:
        for client in clients:
            client.close()


async def test_a_client_that_stops_reading_is_cut_and_never_holds_the_whole_replay(
    sqlite_store: SqlStore, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replay went out in one write (a copy of the whole picture in our buffer per client),
    and a client that timed out was closed with close(), which keeps the socket and the buffer
    until they flush: 30 clients that never read held 900 MB, for as long as they stayed."""
    from copbridge.delivery import feed

    monkeypatch.setattr(feed, "_WRITE_TIMEOUT_S", 0.5)
    records = [detection_record(f"t{i}") for i in range(12_000)]  # past the kernel buffers
    queue(sqlite_store, [], records)
    replay_bytes = sum(len(r.cot_xml) for r in records)
    settings = make_settings(sqlite_url, feed="tcp://127.0.0.1:0")
    last_seq = sqlite_store.feed_since(0, 0, len(records) + 10)[-1].seq
    async with running(DeliveryService(settings, sqlite_store)) as service:
        assert service.feed is not None
        cot_feed = service.feed
        # The pump's first pass reads the last minute again: a client connected during it has
        # those 12,000 offered too, overflows its queue and is dropped as too slow (also
        # aborted), which is not what this test is about.
        await poll_until(lambda: cot_feed._cursor >= last_seq, 10)
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(("127.0.0.1", service.feed.port))
        try:
            buffered: list[int] = []
            feed_clients = service.feed._clients
            await poll_until(lambda: bool(feed_clients), 5)  # accepted and registered
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and service.feed._clients:
                clients = list(service.feed._clients)
                buffered.extend(c.writer.transport.get_write_buffer_size() for c in clients)
                await asyncio.sleep(0.05)
            assert not service.feed._clients, "the client that reads nothing was not dropped"
            assert replay_bytes > 7_000_000
            assert max(buffered) < 600_000  # a few replay chunks, not the whole picture
            # Cut, not closed after a flush: reading now gives a reset, not every event.
            stuck.settimeout(5)
            with pytest.raises(ConnectionResetError):
                _read_to_the_end(stuck)
        finally:
            stuck.close()


async def test_a_client_too_slow_for_the_live_events_is_cut(
    sqlite_store: SqlStore, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dropped as too slow (its queue full), its connection was closed gracefully: the kernel
    kept it, and what it had queued, while the client read nothing."""
    from copbridge.delivery import feed

    monkeypatch.setattr(feed, "_QUEUE", 5)
    settings = make_settings(sqlite_url, feed="tcp://127.0.0.1:0")
    async with running(DeliveryService(settings, sqlite_store)) as service:
        assert service.feed is not None
        cot_feed = service.feed
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(("127.0.0.1", cot_feed.port))
        try:
            await poll_until(lambda: bool(cot_feed._clients), 5)
            queue(sqlite_store, [], [detection_record(f"live{i}") for i in range(50)])
            service.notify()
            await poll_until(lambda: not cot_feed._clients, 5)
            stuck.settimeout(5)
            with pytest.raises(ConnectionResetError):
                _read_to_the_end(stuck)
        finally:
            stuck.close()


def _read_to_the_end(sock: socket.socket) -> None:
    while sock.recv(1 << 16):
        pass


async def test_tls_feed_serves_clients_with_a_certificate_and_refuses_others(
    tmp_path: Path, sqlite_store: SqlStore, sqlite_url: str
) -> None:
    site = tmp_path / "pki"
    site.parent.mkdir(parents=True, exist_ok=True)
    files = make_tls_site(
        site, 8089
    )  # never started; takyctl's CA, server cert for "localhost", client certs
    record = detection_record("tls-feed")
    queue(sqlite_store, [], [record])
    settings = make_settings(
        sqlite_url,
        feed="tls://127.0.0.1:0",
        feed_cert=site / "ssl" / "server.crt",
        feed_key=site / "ssl" / "server.key",
        feed_ca_file=files.ca,
    )
    async with running(DeliveryService(settings, sqlite_store)) as service:
        assert service.feed is not None
        port = service.feed.port

        def connect(with_cert: bool) -> CotClient:
            context = ssl.create_default_context(cafile=str(files.ca))
            if with_cert:
                context.load_cert_chain(files.receiver.crt, files.receiver.key)
            client = CotClient.__new__(CotClient)
            raw = socket.create_connection(("127.0.0.1", port), 5)
            client.sock = context.wrap_socket(raw, server_hostname="localhost")
            client.timeout, client._buffer, client.received = 5.0, b"", []
            return client

        good = await asyncio.to_thread(connect, True)
        try:
            await asyncio.to_thread(good.wait_for, has_uid(uid_of(record)), 5)
        finally:
            good.close()

        def refused() -> None:
            client = connect(False)  # TLS 1.3: the server's refusal shows on the first read
            client.wait_for(has_uid(uid_of(record)), 3)

        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            await asyncio.to_thread(refused)


@pytest.mark.postgres
async def test_an_event_committed_below_the_cursor_still_reaches_connected_clients(
    pg_url: str,
) -> None:
    # PostgreSQL hands out an event's sequence number before its transaction commits: another
    # replica's event can commit below the number the feed already passed (a probe with two
    # replicas saw 28 of 4,506 events never streamed to a connected client).
    store = open_store(pg_url)
    store.upgrade()
    settings = make_settings(pg_url, feed="tcp://127.0.0.1:0")
    late, first = detection_record("late"), detection_record("first")
    try:
        async with running(DeliveryService(settings, store)) as service:
            assert service.feed is not None
            client = CotClient("127.0.0.1", service.feed.port)
            try:
                with psycopg.connect(pg_url) as replica:  # a transaction left open
                    _insert_event(replica, late)
                    queue(store, [], [first])  # a higher number, committed first
                    service.notify()
                    await asyncio.to_thread(client.wait_for, has_uid(uid_of(first)), 5)
                service.notify()  # the replica has committed now
                await asyncio.to_thread(client.wait_for, has_uid(uid_of(late)), 5)
            finally:
                client.close()
    finally:
        store.close()


def _insert_event(connection: psycopg.Connection[Any], record: DetectionRecord) -> None:
    event = record.events[0]
    connection.execute(
        "INSERT INTO events (uid, cot_type, kind, time_us, stale_us, created_us, payload)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (
            event.uid,
            event.cot_type,
            event.kind,
            event.time_us,
            event.stale_us,
            event.time_us,
            event.payload,
        ),
    )


@pytest.mark.postgres
async def test_an_event_numbered_below_a_replayed_one_reaches_the_client_when_it_commits(
    pg_url: str,
) -> None:
    # The replay can hold an event numbered above one whose transaction is still open; the pump
    # reads both later as one run (no hole) and the client must still get the lower one.
    store = open_store(pg_url)
    store.upgrade()
    settings = make_settings(pg_url, feed="tcp://127.0.0.1:0", delivery_poll_s=30.0)
    late, first = detection_record("late"), detection_record("first")
    try:
        async with running(DeliveryService(settings, store)) as service:
            assert service.feed is not None
            with psycopg.connect(pg_url) as replica:  # a transaction left open
                _insert_event(replica, late)
                queue(store, [], [first])  # a higher number, committed first; pump not woken
                client = CotClient("127.0.0.1", service.feed.port)
                try:
                    await asyncio.to_thread(client.wait_for, has_uid(uid_of(first)), 5)
                    replica.commit()
                    service.notify()  # the pump reads `late` and `first` in one page now
                    await asyncio.to_thread(client.wait_for, has_uid(uid_of(late)), 5)
                    await asyncio.sleep(0.3)
                    assert not any(map(has_uid(uid_of(first)), client.received)), "sent twice"
                finally:
                    client.close()
    finally:
        store.close()


async def test_a_client_connecting_while_the_pump_is_behind_never_gets_an_older_position(
    sqlite_store: SqlStore, sqlite_url: str
) -> None:
    settings = make_settings(sqlite_url, feed="tcp://127.0.0.1:0", delivery_poll_s=30.0)
    base = datetime.now(UTC)
    older = detection_record("t17", at=base - timedelta(seconds=1))
    newer = detection_record("t17", at=base)
    async with running(DeliveryService(settings, sqlite_store)) as service:
        assert service.feed is not None
        queue(sqlite_store, [], [older, newer])  # stored, the pump not woken: it is behind
        client = CotClient("127.0.0.1", service.feed.port)
        try:
            got = await asyncio.to_thread(client.wait_for, has_uid(uid_of(newer)), 5)
            assert parse_xml(got).time == parse_xml(newer.cot_xml).time
            service.notify()  # the pump now reads both updates of the track
            marker = detection_record("after")
            queue(sqlite_store, [], [marker])
            service.notify()
            await asyncio.to_thread(client.wait_for, has_uid(uid_of(marker)), 5)
            assert not any(map(has_uid(uid_of(older)), client.received)), "older position sent"
        finally:
            client.close()


async def test_a_late_detection_with_an_older_time_does_not_move_a_feed_marker_back(
    sqlite_store: SqlStore, sqlite_url: str
) -> None:
    settings = make_settings(sqlite_url, feed="tcp://127.0.0.1:0")
    base = datetime.now(UTC)
    async with running(DeliveryService(settings, sqlite_store)) as service:
        assert service.feed is not None
        client = CotClient("127.0.0.1", service.feed.port)
        try:
            await asyncio.to_thread(client.registered, "feed-client", base)
            newer = detection_record("t18", at=base)
            queue(sqlite_store, [], [newer])
            service.notify()
            await asyncio.to_thread(client.wait_for, has_uid(uid_of(newer)), 5)
            late = detection_record("t18", at=base - timedelta(seconds=5))
            marker = detection_record("after")
            queue(sqlite_store, [], [late, marker])  # stored later, captured earlier
            service.notify()
            await asyncio.to_thread(client.wait_for, has_uid(uid_of(marker)), 5)
            assert not any(map(has_uid(uid_of(late)), client.received)), "older position sent"
        finally:
            client.close()


@pytest.mark.postgres
async def test_an_event_committing_below_the_newest_when_the_feed_starts_still_reaches_clients(
    pg_url: str,
) -> None:
    # Another replica's transaction holds a lower number while this one starts its feed.
    store = open_store(pg_url)
    store.upgrade()
    settings = make_settings(pg_url, feed="tcp://127.0.0.1:0")
    late, first = detection_record("late"), detection_record("first")
    try:
        with psycopg.connect(pg_url) as replica:  # a transaction left open
            _insert_event(replica, late)
            queue(store, [], [first])  # a higher number, committed first
            async with running(DeliveryService(settings, store)) as service:
                assert service.feed is not None
                client = CotClient("127.0.0.1", service.feed.port)
                try:
                    await asyncio.to_thread(client.wait_for, has_uid(uid_of(first)), 5)
                    replica.commit()
                    service.notify()
                    await asyncio.to_thread(client.wait_for, has_uid(uid_of(late)), 5)
                finally:
                    client.close()
    finally:
        store.close()
