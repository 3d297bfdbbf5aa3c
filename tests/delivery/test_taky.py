"""Events queued in the outbox reach a second client of a real TAK server (taky), TCP and TLS."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from copbridge.cot import ParsedEvent, parse_xml
from copbridge.delivery import DeliveryService, LinkState
from copbridge.store import SqlStore

from .conftest import make_settings, running, taky_destination
from .events import detection_record, has_uid, queue, uid_of
from .taky import Taky

pytestmark = pytest.mark.timeout(60)

TRACKS = ("a", "b", "c")
ROUNDS = 4


def _same_event(got: ParsedEvent, sent: ParsedEvent) -> None:
    """taky re-writes <event>/<point> (6 decimals) and passes <detail> through."""
    assert (got.uid, got.type, got.how) == (sent.uid, sent.type, sent.how)
    assert (got.time, got.start, got.stale) == (sent.time, sent.start, sent.stale)
    assert got.lat == pytest.approx(sent.lat, abs=5e-7)
    assert got.lon == pytest.approx(sent.lon, abs=5e-7)
    assert got.detail == sent.detail


@pytest.mark.parametrize("scheme", ["tcp", "tls"])
async def test_updates_arrive_complete_and_in_order_per_uid(
    scheme: str, request: pytest.FixtureRequest, sqlite_store: SqlStore, sqlite_url: str
) -> None:
    taky: Taky = request.getfixturevalue(f"taky_{scheme}")
    receiver = taky.client()
    receiver.registered("rx", datetime.now(UTC))
    destination = taky_destination(taky)
    settings = make_settings(sqlite_url, destinations=[destination])
    sent: dict[str, dict[datetime, ParsedEvent]] = {}
    newest_seen: list[bytes] = []
    try:
        async with running(DeliveryService(settings, sqlite_store)) as service:
            base = datetime.now(UTC)
            for update in range(ROUNDS):
                records = [
                    detection_record(track, at=base + timedelta(seconds=update), lat=41 + update)
                    for track in TRACKS
                ]
                queue(sqlite_store, [destination.url], records)
                service.notify()
                for record in records:
                    event = parse_xml(record.cot_xml)
                    sent.setdefault(uid_of(record), {})[event.time] = event
                await asyncio.sleep(0.05)
            for uid, by_time in sent.items():
                match = has_uid(uid, max(by_time))
                newest_seen.append(await asyncio.to_thread(receiver.wait_for, match, 10))
            (state,) = service.snapshot()
            assert state.state is LinkState.CONNECTED
            assert state.last_success is not None
        # earlier updates (still in the client's list, in arrival order), then each newest one
        received = [parse_xml(e) for e in [*receiver.received, *newest_seen] if b"t-x-c-t" not in e]
    finally:
        receiver.close()
    per_uid: dict[str, list[ParsedEvent]] = {}
    for got in received:
        per_uid.setdefault(got.uid, []).append(got)
    for uid, arrived in per_uid.items():
        times = [e.time for e in arrived]
        assert times == sorted(set(times)), f"{uid} arrived out of order or twice: {times}"
        for got in arrived:
            _same_event(got, sent[uid][got.time])
