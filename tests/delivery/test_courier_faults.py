"""A courier keeps serving its destination whatever goes wrong around a dropped link: a long
outage, a bug in what settles a drop, a task that fails outright."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from copbridge.delivery import DeliveryService, service
from copbridge.delivery.backoff import Backoff
from copbridge.delivery.destinations import parse_destination
from copbridge.delivery.monitor import LinkMonitor
from copbridge.store import SqlStore, StoreUnavailable
from tests.system.processes import free_port

from .conftest import make_settings, poll_until, running
from .events import detection_record, queue, uid_of
from .proxy import FaultProxy
from .sink import CotSink

pytestmark = pytest.mark.timeout(30)


def test_backoff_stays_at_its_ceiling_however_long_the_outage() -> None:
    backoff = Backoff(0.5, 30.0)
    delays = [backoff.next() for _ in range(5_000)]  # 2.0**1024 overflowed at try 1,025
    assert all(15.0 <= d <= 30.0 for d in delays[-100:])


async def test_a_failure_while_settling_a_drop_does_not_end_delivery(
    sqlite_store: SqlStore, sqlite_url: str
) -> None:
    port = free_port()  # nobody listens yet: the first connections fail
    url = f"tcp://127.0.0.1:{port}"
    settings = make_settings(sqlite_url, destinations=url, delivery_backoff_max_s=0.3)
    record = detection_record("after-bug")
    async with running(DeliveryService(settings, sqlite_store)) as delivery:
        courier = delivery.couriers[0]
        calls = 0
        failed = courier._monitor.failed

        async def failing(name: str, error: str) -> None:
            nonlocal calls
            calls += 1
            if calls <= 2:
                raise RuntimeError("a bug in the link monitor")
            await failed(name, error)

        courier._monitor.failed = failing  # type: ignore[method-assign]
        await poll_until(lambda: calls >= 3, 10)
        sink = CotSink()
        await sink.start(port)
        try:
            queue(sqlite_store, [url], [record])
            delivery.notify()
            await sink.wait_count(1, 10)
        finally:
            await sink.stop()
    assert sink.uids() == [uid_of(record)]


async def test_a_delivery_task_that_fails_is_started_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(service, "_RESTART_S", 0.01)
    runs: list[int] = []

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise RuntimeError("bug")

    make: Any = flaky
    await asyncio.wait_for(service._supervised(make, "test task"), 5)
    assert runs == [0, 1, 2]


async def test_a_resend_after_a_drop_skips_a_track_another_replica_has_sent_newer(
    sqlite_store: SqlStore, sqlite_url: str
) -> None:
    # A peer that never answers pings: drained rows are marked sent and kept to send again
    # after a drop. Meanwhile another replica sent the track's newer position; the old one
    # sent again would be left on the map.
    sink = CotSink()
    await sink.start()
    proxy = FaultProxy("127.0.0.1", sink.port)
    await proxy.start()
    url = f"tcp://127.0.0.1:{proxy.port}"
    base = datetime.now(UTC)
    older = detection_record("t9", at=base - timedelta(seconds=2))
    newer = detection_record("t9", at=base)
    settings = make_settings(sqlite_url, destinations=url, delivery_poll_s=30.0)
    try:
        async with running(DeliveryService(settings, sqlite_store)) as delivery:
            queue(sqlite_store, [url], [older])
            delivery.notify()
            await sink.wait_count(1, 10)
            await poll_until(lambda: sqlite_store.outbox_stats([url])[0].sent == 1, 10)
            queue(sqlite_store, [url], [newer])  # replica B claims and sends it at once
            now_us = int(datetime.now(UTC).timestamp() * 1e6)
            claimed = sqlite_store.claim(url, "replica-b", 10, 30_000_000, now_us)
            assert [i.uid for i in claimed] == [uid_of(newer)]
            assert sqlite_store.mark_sent(claimed, now_us) == 1
            proxy.reset()  # the link drops; this replica reconnects and re-sends
            await poll_until(lambda: len(sink.connections) >= 2, 10)
            marker = detection_record("marker")
            queue(sqlite_store, [url], [marker])
            delivery.notify()
            await sink.wait_count(2, 10)
            assert sink.uids() == [uid_of(older), uid_of(marker)]
    finally:
        await proxy.stop()
        await sink.stop()


async def test_a_state_change_the_store_could_not_take_is_audited_with_the_next(
    sqlite_store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    destination = parse_destination("tcp://127.0.0.1:9")
    monitor = LinkMonitor(sqlite_store, [destination], "test")
    real = sqlite_store.append_audit

    def down(entries: Any) -> None:
        raise StoreUnavailable("disk full")

    monkeypatch.setattr(sqlite_store, "append_audit", down)
    await monitor.failed(destination.name, "refused")  # connecting -> backing off: not written
    monkeypatch.setattr(sqlite_store, "append_audit", real)
    await monitor.connected(destination.name)  # written with the one held
    changes = sqlite_store.audit_records(kind="destination.state_changed", limit=10)
    assert [(c.data["from"], c.data["to"]) for c in changes] == [
        ("connecting", "backing_off"),
        ("backing_off", "connected"),
    ]
    assert all(c.data["at"] for c in changes)
    assert sqlite_store.verify_audit().ok


class _DeadLink:
    """A dropped link whose peer had acknowledged what was written before ``confirmed``."""

    answers_pings = True

    def __init__(self, confirmed: float) -> None:
        self.confirmed = confirmed

    def confirmed_at(self) -> float:
        return self.confirmed


async def test_rows_written_to_a_dead_link_go_back_even_when_marking_the_rest_times_out(
    sqlite_store: SqlStore, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Marking the acknowledged rows may time out on a stalled store (TimeoutError, not a
    StoreError); the unacknowledged ones must still be handed back, not left waiting for the
    next link's first pong to mark them sent."""
    url = "tcp://127.0.0.1:9"
    queue(sqlite_store, [url], [detection_record("acked"), detection_record("unacked")])
    now_us = int(datetime.now(UTC).timestamp() * 1e6)
    acked, unacked = sqlite_store.claim(url, "here:1:x", 10, 30_000_000, now_us)
    delivery = DeliveryService(make_settings(sqlite_url, destinations=url), sqlite_store)
    courier = delivery.couriers[0]
    courier._unconfirmed.extend([(1.0, [acked]), (3.0, [unacked])])

    def stalled(items: Any, now_us: int) -> int:
        raise TimeoutError

    monkeypatch.setattr(sqlite_store, "mark_sent", stalled)
    courier.finish()  # no backoff wait after the drop
    await courier._dropped(_DeadLink(2.0), "link dropped")  # type: ignore[arg-type]
    assert not courier._unconfirmed
    [stats] = sqlite_store.outbox_stats([url])
    assert (stats.pending, stats.sent) == (2, 0)  # both pending; the unacked one released
    monkeypatch.undo()
    again = sqlite_store.claim(url, "here:1:y", 10, 30_000_000, now_us + 5_000_000)
    assert [i.uid for i in again] == [uid_of(detection_record("unacked"))]
