"""Several workers on one PostgreSQL drain one backlog together: every row sent, none by both.
A worker that dies holding leases does not strand its rows: they come back when leases run out."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from copbridge.config import DestinationSettings
from copbridge.delivery import DeliveryService
from copbridge.store import open_store

from .conftest import make_settings, poll_until, running
from .events import detection_record, queue
from .sink import CotSink

pytestmark = pytest.mark.timeout(60)

BACKLOG = 3000


async def test_two_workers_on_postgresql_never_send_a_row_twice(pg_url: str) -> None:
    sink = CotSink()
    await sink.start()
    url = f"tcp://127.0.0.1:{sink.port}"
    stores = [open_store(pg_url) for _ in range(3)]
    stores[0].upgrade()
    try:
        # distinct uids, so coalescing drops nothing and every row must be sent
        records = [detection_record(f"t{i}") for i in range(BACKLOG)]
        for start in range(0, BACKLOG, 500):
            queue(stores[0], [url], records[start : start + 500])
        settings = make_settings(pg_url, destinations=[DestinationSettings(url=url, batch_size=50)])
        first = DeliveryService(settings, stores[1], owner="worker-1")
        second = DeliveryService(settings, stores[2], owner="worker-2")
        async with running(first), running(second):
            await sink.wait_count(BACKLOG, 40)
            # the last batch's mark_sent may still be running
            await poll_until(
                lambda: sum(c.sent for s in (first, second) for c in s.couriers) >= BACKLOG, 10
            )
        (stats,) = stores[0].outbox_stats([url])
    finally:
        await sink.stop()
        for store in stores:
            store.close()
    counts = Counter(sink.uids())
    assert len(counts) == BACKLOG
    assert max(counts.values()) == 1, counts.most_common(3)
    assert (stats.pending, stats.sent) == (0, BACKLOG)
    sent_by = [c.sent for s in (first, second) for c in s.couriers]
    assert sum(sent_by) == BACKLOG
    assert min(sent_by) > 0, f"one worker did all the work: {sent_by}"
    assert len(sink.connections) == 2


async def test_rows_leased_by_a_dead_worker_are_delivered_after_the_lease(
    sqlite_url: str,
) -> None:
    sink = CotSink()
    await sink.start()
    url = f"tcp://127.0.0.1:{sink.port}"
    store = open_store(sqlite_url)
    store.upgrade()
    try:
        records = [detection_record(f"r{i}") for i in range(5)]
        queue(store, [url], records)
        # a worker claims everything with a 1 s lease, then is SIGKILLed (never marks or releases)
        now_us = time.time_ns() // 1000
        assert len(store.claim(url, "dead-worker", 100, 1_000_000, now_us)) == 5
        settings = make_settings(sqlite_url, destinations=url)
        async with running(DeliveryService(settings, store)):
            started = time.monotonic()
            await sink.wait_count(5, 10)
            assert time.monotonic() - started >= 0.5  # not before the lease ran out
        (stats,) = store.outbox_stats([url])
        assert (stats.pending, stats.sent) == (0, 5)
    finally:
        await sink.stop()
        store.close()


@pytest.mark.parametrize("on_loop", [False, True], ids=["writer-thread", "writer-on-loop"])
async def test_a_clean_stop_leaves_no_row_leased(sqlite_url: str, on_loop: bool) -> None:
    sink = CotSink()
    await sink.start()
    url = f"tcp://127.0.0.1:{sink.port}"
    store = open_store(sqlite_url)
    store.upgrade()
    try:
        queue(store, [url], [detection_record(f"s{i}") for i in range(2000)])
        settings = make_settings(
            sqlite_url, destinations=[DestinationSettings(url=url, batch_size=20)]
        )
        if on_loop:  # as in serve: the store's writer runs on this event loop
            await store.attach_loop()
        async with running(DeliveryService(settings, store)):
            await sink.wait_count(100, 10)  # stopped in the middle of the backlog
        await store.detach_loop()
        (stats,) = store.outbox_stats([url])
        assert 0 < stats.pending < 2000
        # every row not sent can be claimed at once by another worker: no lease was left behind
        again = store.claim(url, "next-worker", 5000, 1_000_000, time.time_ns() // 1000)
        assert len(again) == stats.pending
    finally:
        await sink.stop()
        store.close()
