"""Delivery as one service for ``serve`` and ``worker``: couriers, link monitor, feed, retention.

The API calls ``notify()`` after each commit so couriers and the feed wake at once instead of at
the next poll, and serves ``snapshot()`` as the destinations' state.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from copbridge.config import Settings
from copbridge.delivery.destinations import Destination, configured_destinations
from copbridge.delivery.feed import CotFeed, FeedTls, parse_feed
from copbridge.delivery.monitor import DestinationState, LinkMonitor
from copbridge.delivery.worker import Courier, DeliveryTiming
from copbridge.logs import get_logger
from copbridge.store import Store

_log = get_logger("copbridge.delivery")
_STATS_EVERY_S = 2.0
_EXPIRE_EVERY_S = 5.0  # stale rows of a link that is down stop counting as backlog this soon


def worker_id() -> str:
    """Names this process in leases and audit records: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def timing_from(settings: Settings) -> DeliveryTiming:
    return DeliveryTiming(
        lease_s=settings.delivery_lease_s,
        poll_s=settings.delivery_poll_s,
        backoff_min_s=settings.delivery_backoff_min_s,
        backoff_max_s=settings.delivery_backoff_max_s,
        resend_s=settings.delivery_resend_s,
    )


class DeliveryService:
    """Starts and stops everything that moves stored events out of the process."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        run_worker: bool | None = None,
        feed: str | None = None,
        owner: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.owner = owner or worker_id()
        self.destinations: list[Destination] = configured_destinations(settings)
        self.run_worker = settings.run_worker if run_worker is None else run_worker
        self.monitor = LinkMonitor(store, self.destinations, self.owner)
        timing = timing_from(settings)
        self.couriers = (
            [
                Courier(d, store, self.monitor, owner=self.owner, timing=timing)
                for d in self.destinations
            ]
            if self.run_worker
            else []
        )
        address = parse_feed(settings.feed if feed is None else feed)
        self.feed: CotFeed | None = None
        if address is not None:
            self.feed = CotFeed(
                store,
                address,
                poll_s=settings.delivery_poll_s,
                tls=FeedTls.from_settings(settings),
            )
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.feed is not None:
            await self.feed.start()
        for courier in self.couriers:
            self._spawn(courier.run, f"courier {courier.destination.name}")
        if self.destinations:
            self._spawn(self._refresh_stats, "link monitor")
        if self.run_worker:
            self._spawn(self._purge_old_rows, "retention")
            self._spawn(self._expire_stale_rows, "stale rows")
        _log.info(
            "delivery started",
            owner=self.owner,
            destinations=[d.name for d in self.destinations],
            worker=self.run_worker,
            feed=self.feed is not None,
        )

    def _spawn(self, make: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        self._tasks.append(asyncio.create_task(_supervised(make, name), name=name))

    async def stop(self, grace_s: float = 5.0) -> None:
        """Let couriers finish the batch in hand (up to ``grace_s``), then cancel what is left."""
        for courier in self.couriers:
            courier.finish()
        couriers = self._tasks[: len(self.couriers)]
        if couriers:
            await asyncio.wait(couriers, timeout=grace_s)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.feed is not None:
            await self.feed.stop()
        _log.info("delivery stopped", owner=self.owner)

    def notify(self) -> None:
        """Wake couriers and the feed now (safe from any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake_all()
        else:
            loop.call_soon_threadsafe(self._wake_all)

    def _wake_all(self) -> None:
        for courier in self.couriers:
            courier.wake()
        if self.feed is not None:
            self.feed.wake()

    def snapshot(self) -> list[DestinationState]:
        """Each destination's link state and outbox figures (at most a couple of seconds old)."""
        return self.monitor.snapshot()

    async def _refresh_stats(self) -> None:
        while True:
            try:
                await self.monitor.refresh()
            except Exception as exc:  # the store may be down a moment; ingest health is elsewhere
                _log.warning("cannot read outbox figures", error=str(exc))
            await asyncio.sleep(_STATS_EVERY_S)

    async def _expire_stale_rows(self) -> None:
        """Expire stale rows of every destination, link up or down, configured or removed: a
        courier expires its own only when it claims, so a long outage would keep counting dead
        rows as backlog, and a removed destination's rows would stay pending for good."""
        while True:
            try:
                await asyncio.to_thread(self.store.expire_stale, time.time_ns() // 1000)
            except Exception as exc:  # the store may be down a moment; the next round retries
                _log.warning("cannot expire stale rows", error=str(exc))
            await asyncio.sleep(_EXPIRE_EVERY_S)

    async def _purge_old_rows(self) -> None:
        keep_us = int(self.settings.retention_hours * 3600 * 1_000_000)
        while True:
            now_us = time.time_ns() // 1000
            try:
                gone = await asyncio.to_thread(self.store.purge, now_us - keep_us, now_us)
                if gone:
                    _log.info("purged delivered rows", rows=gone)
            except Exception as exc:
                _log.warning("cannot purge", error=str(exc))
            await asyncio.sleep(self.settings.purge_interval_s)


_RESTART_S = 5.0


async def _supervised(make: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
    """Run a delivery task; one that fails (a bug) is logged and started again, so that a
    destination never stops being served until the process restarts."""
    while True:
        try:
            await make()
        except Exception:
            _log.exception("delivery task failed; starting it again", task=name, in_s=_RESTART_S)
            await asyncio.sleep(_RESTART_S)
        else:
            return
