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


@pytest.mark.parametrize("configured", [[DOWN], []], ids=["another-configured", "none-configured"])
async def test_stale_rows_of_a_destination_no_longer_configured_expire_too(
    sqlite_store: SqlStore, sqlite_url: str, configured: list[str]
) -> None:
    """Rows queued for a destination that was then taken out of the settings: no courier will
    claim them, so only the worker's sweep can expire them (it used to sweep configured ones)."""
    removed = "tcp://127.0.0.1:2"
    settings = make_settings(
        sqlite_url, destinations=[DestinationSettings(url=url) for url in configured]
    )
    queue(sqlite_store, [removed], [detection_record(f"left-{i}", stale_s=1.0) for i in range(3)])
    queue(sqlite_store, [removed], [detection_record("still-fresh", stale_s=600.0)])

    def stats() -> tuple[int, int]:
        [figures] = sqlite_store.outbox_stats([removed])
        return figures.pending, figures.expired

    async with running(DeliveryService(settings, sqlite_store)):
        await poll_until(lambda: stats() == (1, 3), 15)
    expired = [r for r in sqlite_store.audit_records(0, 100) if r.kind == "delivery.expired"]
    assert [(r.subject, r.data["count"]) for r in expired] == [(removed, 3)]
    assert sqlite_store.verify_audit().ok
