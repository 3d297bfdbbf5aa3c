"""Rows that went stale while their destination was down are expired by the worker, not
counted as backlog until the link comes back (a delivery probe saw 501 dead rows reported as
pending and kept forever for a destination that never answered)."""

from __future__ import annotations

import pytest

from copbridge.config import DestinationSettings
from copbridge.delivery import DeliveryService, LinkState
from copbridge.store import SqlStore

from .conftest import make_settings, poll_until, running
from .events import detection_record, queue

pytestmark = pytest.mark.timeout(60)

DOWN = "tcp://127.0.0.1:1"  # nothing listens: every connect is refused


async def test_stale_rows_of_a_link_that_stays_down_expire_and_leave_the_backlog(
    sqlite_store: SqlStore, sqlite_url: str
) -> None:
    settings = make_settings(sqlite_url, destinations=[DestinationSettings(url=DOWN)])
    fresh = detection_record("fresh", stale_s=600.0)
    dying = [detection_record(f"dying-{i}", stale_s=1.0) for i in range(5)]
    queue(sqlite_store, [DOWN], [fresh, *dying])
    async with running(DeliveryService(settings, sqlite_store)) as service:

        def stats() -> tuple[int, int]:
            [figures] = sqlite_store.outbox_stats([DOWN])
            return figures.pending, figures.expired

        await poll_until(lambda: service.snapshot()[0].state != LinkState.CONNECTED, 10)
        await poll_until(lambda: stats() == (1, 5), 15)  # the fresh one still waits
    assert service.snapshot()[0].state != LinkState.CONNECTED  # never came up meanwhile
    expired = [r for r in sqlite_store.audit_records(0, 100) if r.kind == "delivery.expired"]
    assert expired
    assert expired[0].subject == DOWN
    assert sqlite_store.verify_audit().ok
