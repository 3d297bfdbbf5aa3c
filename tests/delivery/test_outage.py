"""A TAK server outage: stop taky, keep queueing, restart it. Every non-stale event arrives (the
newest per uid at least), stale ones never do, the feed keeps serving, the monitor tells — over
plain TCP and over TLS with client certificates."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from copbridge.cot import parse_xml
from copbridge.delivery import DeliveryService, LinkState
from copbridge.store import SqlStore
from tests.cot.taky_server import CotClient

from .conftest import make_settings, poll_until, running, taky_destination
from .events import detection_record, has_uid, queue, uid_of
from .proxy import FaultProxy
from .taky import Taky

pytestmark = pytest.mark.timeout(90)


async def _wait_state(service: DeliveryService, states: set[LinkState], seconds: float) -> None:
    await poll_until(lambda: service.snapshot()[0].state in states, seconds)


@pytest.mark.parametrize("scheme", ["tcp", "tls"])
async def test_outage_then_restart_delivers_newest_per_uid_and_feed_keeps_serving(
    scheme: str, request: pytest.FixtureRequest, sqlite_store: SqlStore, sqlite_url: str
) -> None:
    # The proxy stands for the network path: while taky restarts it refuses connections, so the
    # receiving client is registered with the new taky before copbridge reconnects.
    taky: Taky = request.getfixturevalue(f"taky_{scheme}")
    proxy = FaultProxy(taky.host, taky.port)
    await proxy.start()
    url = f"{scheme}://127.0.0.1:{proxy.port}"
    destination = taky_destination(taky).model_copy(update={"url": url})
    settings = make_settings(sqlite_url, destinations=[destination], feed="tcp://127.0.0.1:0")
    receiver = taky.client()
    receiver.registered("rx", datetime.now(UTC))
    clients: list[CotClient] = [receiver]
    try:
        async with running(DeliveryService(settings, sqlite_store)) as service:
            assert service.feed is not None
            watcher = CotClient("127.0.0.1", service.feed.port)
            clients.append(watcher)
            first = detection_record("a")
            queue(sqlite_store, [url], [first])
            service.notify()
            await asyncio.to_thread(receiver.wait_for, has_uid(uid_of(first)), 10)
            await asyncio.to_thread(watcher.wait_for, has_uid(uid_of(first)), 10)

            # -- outage
            await proxy.refuse()
            taky.stop()
            receiver.close()
            await _wait_state(service, {LinkState.BACKING_OFF, LinkState.FAILING}, 10)
            base = datetime.now(UTC)
            newest: dict[str, datetime] = {}
            for update in range(3):
                for track in ("a", "b", "c"):
                    record = detection_record(track, at=base + timedelta(seconds=update))
                    queue(sqlite_store, [url], [record])
                    newest[uid_of(record)] = parse_xml(record.cot_xml).time
                service.notify()
                await asyncio.sleep(0.02)
            ghost = detection_record("ghost", stale_s=1.0)
            queue(sqlite_store, [url], [ghost])
            service.notify()

            # the feed keeps serving: live events to a connected client, a replay to a new one
            for uid, at in newest.items():
                await asyncio.to_thread(watcher.wait_for, has_uid(uid, at), 10)
            late = CotClient("127.0.0.1", service.feed.port)
            clients.append(late)
            for uid, at in newest.items():
                await asyncio.to_thread(late.wait_for, has_uid(uid, at), 10)

            await asyncio.sleep(1.2)  # the ghost goes stale while taky is down
            # -- restart
            taky.start()
            receiver = taky.client()
            clients.append(receiver)
            receiver.registered("rx", datetime.now(UTC))
            await proxy.accept()
            for uid, at in newest.items():
                await asyncio.to_thread(receiver.wait_for, has_uid(uid, at), 15)
            await _wait_state(service, {LinkState.CONNECTED}, 5)
            await asyncio.sleep(0.5)
            assert not any(uid_of(ghost).encode() in e for e in receiver.received)
            (stats,) = await asyncio.to_thread(sqlite_store.outbox_stats, [url])
            assert stats.pending == 0
            assert stats.expired == 1
            assert stats.superseded >= 6  # 2 older updates of each of a, b, c (and the first a)
    finally:
        for client in clients:
            client.close()
        await proxy.stop()
    changes = sqlite_store.audit_records(kind="destination.state_changed", limit=100)
    seen = [(r.data["from"], r.data["to"]) for r in changes]
    assert ("connected", "backing_off") in seen
    assert seen[-1][1] == "connected"
