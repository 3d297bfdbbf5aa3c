"""The delivery worker: one courier per destination moves outbox rows onto its link.

Hand-written because no queue library gives what the outbox needs together: rows stored with the
detection in one transaction, leases fenced per row, coalescing per uid, expiry at stale time, and
several workers sharing one PostgreSQL. A courier claims a batch under a lease, writes and drains
it, marks it sent; on failure it releases the batch and reconnects, both after backoff + jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from copbridge.delivery.backoff import Backoff
from copbridge.delivery.destinations import Destination
from copbridge.delivery.encoding import EncodingError, encode
from copbridge.delivery.monitor import LinkMonitor
from copbridge.delivery.recent import RecentWrites
from copbridge.delivery.transports import LinkError, Transport, open_transport
from copbridge.logs import get_logger
from copbridge.store import OutboxItem, Store, StoreError

_log = get_logger("copbridge.delivery")
_S = 1_000_000
#: An event the destination cannot take (e.g. no protobuf form) waits this long before a retry.
_UNENCODABLE_RETRY_S = 60.0
#: How long a new stream waits for its peer's first pong before treating it as one that never
#: acknowledges (then rows are marked sent once drained, and re-sent from memory after a drop).
_FIRST_PONG_WAIT_S = 2.0
#: Batches written but not yet acknowledged on one link before the courier waits for a pong:
#: enough to keep the link busy, little enough that the peer's pong is never far behind.
_UNACKNOWLEDGED_BATCHES = 4


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True, slots=True)
class DeliveryTiming:
    """How long leases last, how often idle couriers look, how they back off and re-send."""

    lease_s: float = 30.0
    poll_s: float = 1.0
    backoff_min_s: float = 0.5
    backoff_max_s: float = 30.0
    resend_s: float | None = None  # None: enough to cover the keepalive bound (2 x keepalive + 5)

    def lease_for(self, destination: Destination) -> float:
        # A lease must outlive the longest bounded wait on a write (the drain timeout, twice the
        # keepalive) plus marking the batch sent, or two workers could hold one row at once.
        return max(self.lease_s, 2 * destination.keepalive_s + 10)

    def resend_for(self, destination: Destination) -> float:
        if self.resend_s is not None:
            return self.resend_s
        return 2 * destination.keepalive_s + 5


TransportFactory = Callable[[Destination, str, bool, Callable[[], None]], Transport]


def _default_transport(
    destination: Destination, ping_uid: str, expect_answer: bool, wake: Callable[[], None]
) -> Transport:
    return open_transport(destination, ping_uid=ping_uid, expect_answer=expect_answer, wake=wake)


class _Marker:
    """Marks batches sent one after another in the background (the next waits for the last)."""

    def __init__(self, mark: Callable[[Sequence[OutboxItem]], Coroutine[Any, Any, None]]) -> None:
        self._mark = mark
        self._last: asyncio.Task[None] | None = None

    async def mark(self, items: Sequence[OutboxItem]) -> None:
        await self.flush()
        self._last = asyncio.create_task(self._mark(items))

    async def flush(self) -> None:
        last, self._last = self._last, None
        if last is not None:
            await last


class Courier:
    """Carries one destination's outbox rows over one link at a time, until cancelled."""

    def __init__(
        self,
        destination: Destination,
        store: Store,
        monitor: LinkMonitor,
        *,
        owner: str,
        timing: DeliveryTiming,
        transport_factory: TransportFactory = _default_transport,
    ) -> None:
        self.destination = destination
        self._store = store
        self._monitor = monitor
        self._owner = owner
        self._timing = timing
        self._factory = transport_factory
        self._wake = asyncio.Event()
        self._backoff = Backoff(timing.backoff_min_s, timing.backoff_max_s)
        self._recent = RecentWrites(timing.resend_for(destination))
        self._resend: list[OutboxItem] = []
        self._held: list[OutboxItem] = []
        # Written to a link that acknowledges (a pong for a later ping) but not acknowledged yet:
        # still leased, not marked sent, so a crash or a drop sends them again.
        self._unconfirmed: deque[tuple[float, list[OutboxItem]]] = deque()
        self._answers_pings = False
        self._lease_us = int(timing.lease_for(destination) * _S)
        self._ping_uid = f"copbridge-{owner.rsplit(':', 1)[-1][:12]}-ping"
        self._stopping = False
        self._stop = asyncio.Event()
        self.sent = 0

    def wake(self) -> None:
        self._wake.set()

    def finish(self) -> None:
        """Stop after the batch in hand is written and marked (a clean shutdown)."""
        self._stopping = True
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        name = self.destination.name
        while not self._stopping:
            transport = self._factory(
                self.destination, self._ping_uid, self._answers_pings, self.wake
            )
            peer_gone = False
            try:
                await transport.open()
                await self._monitor.connected(name)
                await self._carry(transport)
            except LinkError as exc:
                peer_gone = exc.peer_gone
                await self._dropped(transport, str(exc))
            except asyncio.CancelledError:
                self._release_held_now("worker stopped")
                raise
            except Exception as exc:  # a bug must not end delivery: log it, treat it as a drop
                _log.exception("courier failed", destination=name)
                await self._dropped(transport, f"internal error: {exc!r}")
            finally:
                # Once the destination has answered pings, later links must too: a path that
                # swallows new connections (a black hole, a proxy whose server died) would
                # otherwise have what is written into it marked sent. Unless nothing listened
                # there for a while (the connection refused): what answers next may be another
                # server, one that never answers pings, whose every link was cut as half-open.
                if peer_gone:
                    self._answers_pings = False
                else:
                    self._answers_pings |= bool(getattr(transport, "answers_pings", False))
                with contextlib.suppress(Exception):
                    await transport.close()
        # Stopped cleanly: rows claimed ahead go back now rather than when their lease runs out.
        self._release_held_now("worker stopped")

    async def _dropped(self, transport: Transport, error: str) -> None:
        delay = self._backoff.next()
        try:
            await self._settle_drop(transport, error, delay)
        except Exception:  # the next connection must still come: log it and wait as planned
            _log.exception(
                "courier could not settle a dropped link", destination=self.destination.name
            )
        # Only finish() cuts the wait short: new events must not hammer a server that is down.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)

    async def _settle_drop(self, transport: Transport, error: str, delay: float) -> None:
        """Mark what the peer confirmed, hand back what it did not, keep what must be re-sent."""
        now_us = _now_us()
        confirmed = transport.confirmed_at()
        if confirmed is not None:
            self._recent.confirmed(confirmed)
        self._resend = [i for i in self._resend if i.stale_us > now_us]
        self._resend += self._recent.take(time.monotonic(), now_us)
        # Taken before anything is awaited: rows written to the dead link must never stay
        # pending confirmation, or the next link's first pong would mark them sent.
        confirmed_items = self._take_confirmed(confirmed)
        held, self._held = [*self._held, *self._take_unconfirmed()], []
        if confirmed_items:
            await self._mark_sent(confirmed_items)
        if held:
            try:
                await asyncio.to_thread(
                    self._store.release, held, error, now_us + int(delay * _S), now_us
                )
            except (StoreError, TimeoutError) as exc:  # the lease runs out; they come back then
                _log.warning("cannot release", destination=self.destination.name, error=str(exc))
        _log.warning(
            "destination link failed",
            destination=self.destination.name,
            error=error,
            retry_in_s=round(delay, 3),
            resend=len(self._resend),
        )
        await self._monitor.failed(self.destination.name, error)

    def _release_held_now(self, error: str) -> None:
        # Called while being cancelled: no awaiting (and no blocking: the store's writer may run
        # on this very loop); hand the rows back so others need not wait for the lease to lapse.
        held, self._held = [*self._held, *self._take_unconfirmed()], []
        if held:
            now_us = _now_us()
            with contextlib.suppress(Exception):
                self._store.submit_release(held, error, now_us, now_us)

    async def _carry(self, transport: Transport) -> None:
        await transport.keepalive()  # the first ping goes out at once
        await self._learn_acknowledgement(transport)
        if self._resend:
            resend = await self._still_newest([i for i in self._resend if i.stale_us > _now_us()])
            frames, good = await self._encode(transport, resend, release=False)
            await self._write(transport, frames, good)
            self._resend = []
            _log.info("re-sent recent events", destination=self.destination.name, count=len(good))
        # A pipeline of three: while batch k is written, batch k+1 is claimed and batch k-1 is
        # marked sent, so the store and the network work at the same time.
        prefetch: asyncio.Task[list[OutboxItem]] | None = None
        marker = _Marker(self._mark_sent)
        try:
            while not self._stopping:
                await transport.keepalive()
                await self._acknowledged(transport, marker)
                if len(self._unconfirmed) >= _UNACKNOWLEDGED_BATCHES:
                    # Flow control: a busy server answers pings only after reading what came
                    # before them, so writing far ahead would make a slow server look dead.
                    await transport.confirm(self._unconfirmed[-1][0])
                    await self._idle(self.destination.keepalive_s / 4)  # a pong wakes us
                    continue
                task, prefetch = prefetch or asyncio.create_task(self._claim()), None
                items = await task
                if not items:
                    if self._unconfirmed:  # make sure a ping follows the last write
                        await transport.confirm(self._unconfirmed[-1][0])
                    await self._idle(min(self._timing.poll_s, self.destination.keepalive_s / 4))
                    continue
                self._held = items
                frames, good = await self._encode(transport, items, release=True)
                self._held = good
                if len(items) >= self.destination.batch_size:  # a backlog: fetch the next now
                    prefetch = asyncio.create_task(self._claim())
                written_at = time.monotonic()
                await self._write(transport, frames, good)
                self._held = []
                if self._acknowledges(transport):
                    self._unconfirmed.append((written_at, good))
                    await transport.confirm(written_at)
                else:  # a peer that never acknowledges: drained is the best we know
                    await marker.mark(good)
        finally:
            # Rows claimed ahead go back with the held ones; written rows are still marked.
            if prefetch is not None:
                with contextlib.suppress(Exception):
                    self._held = [*self._held, *await prefetch]
            with contextlib.suppress(Exception):
                await marker.flush()

    async def _acknowledged(self, transport: Transport, marker: _Marker) -> None:
        """Mark sent what the peer has acknowledged since the last turn."""
        confirmed = transport.confirmed_at()
        if confirmed is None:
            return
        self._recent.confirmed(confirmed)
        self._backoff.reset()
        acknowledged = self._take_confirmed(confirmed)
        if acknowledged:
            await marker.mark(acknowledged)

    def _acknowledges(self, transport: Transport) -> bool:
        return bool(getattr(transport, "answers_pings", False))

    async def _learn_acknowledgement(self, transport: Transport) -> None:
        """On a stream whose peer has not answered a ping yet, wait briefly for the first pong,
        so the first batches are marked sent only once acknowledged too."""
        if not self.destination.is_stream or self._acknowledges(transport):
            return
        deadline = time.monotonic() + min(_FIRST_PONG_WAIT_S, self.destination.keepalive_s)
        while not self._acknowledges(transport) and time.monotonic() < deadline:
            await self._idle(deadline - time.monotonic())
            await transport.keepalive()  # raises if the link closed meanwhile

    async def _still_newest(self, items: list[OutboxItem]) -> list[OutboxItem]:
        """The items to re-send: not those whose uid has a newer row, which another replica
        (or this courier) may have sent since; the older one would move the marker back."""
        if not items:
            return items
        try:
            outdated = await asyncio.to_thread(self._store.outdated, items)
        except StoreError as exc:  # unknown: sent again, as a re-send is meant to be
            _log.warning("cannot check re-sends", destination=self.destination.name, error=str(exc))
            return items
        return [i for i in items if i.id not in outdated]

    def _take_confirmed(self, confirmed: float | None) -> list[OutboxItem]:
        taken: list[OutboxItem] = []
        while confirmed is not None and self._unconfirmed and self._unconfirmed[0][0] < confirmed:
            taken.extend(self._unconfirmed.popleft()[1])
        return taken

    def _take_unconfirmed(self) -> list[OutboxItem]:
        taken = [item for _, batch in self._unconfirmed for item in batch]
        self._unconfirmed.clear()
        return taken

    async def _claim(self) -> list[OutboxItem]:
        try:
            return await asyncio.to_thread(
                self._store.claim,
                self.destination.name,
                self._owner,
                self.destination.batch_size,
                self._lease_us,
                _now_us(),
            )
        except StoreError as exc:
            _log.warning("cannot claim", destination=self.destination.name, error=str(exc))
            await asyncio.sleep(self._timing.poll_s)
            return []

    async def _idle(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def _encode(
        self, transport: Transport, items: Sequence[OutboxItem], *, release: bool
    ) -> tuple[list[bytes], list[OutboxItem]]:
        frames: list[bytes] = []
        good: list[OutboxItem] = []
        bad: list[OutboxItem] = []
        error = ""
        for item in items:
            try:
                frames.append(encode(item.payload, self.destination, transport.protocol))
                good.append(item)
            except EncodingError as exc:
                bad.append(item)
                error = str(exc)
        if bad and release:
            now_us = _now_us()
            later = now_us + int(_UNENCODABLE_RETRY_S * _S)
            _log.warning("cannot encode", destination=self.destination.name, error=error)
            await asyncio.to_thread(self._store.release, bad, error, later, now_us)
        return frames, good

    async def _write(
        self, transport: Transport, frames: Sequence[bytes], items: Sequence[OutboxItem]
    ) -> None:
        if frames:
            await transport.send(frames)
            if not self._acknowledges(transport):
                # Only links that never acknowledge need the in-memory re-send list; on the
                # others unacknowledged rows stay leased in the store and go back on a drop.
                self._recent.add(items, time.monotonic())

    async def _mark_sent(self, items: Sequence[OutboxItem]) -> None:
        if not items:
            return
        try:
            marked = await asyncio.to_thread(self._store.mark_sent, items, _now_us())
        except (StoreError, TimeoutError) as exc:  # sent but not recorded: the lease expires,
            # a duplicate follows (TimeoutError: a store stalled past the writer's wait)
            _log.warning("cannot mark sent", destination=self.destination.name, error=str(exc))
            return
        if marked < len(items):
            _log.warning(
                "lease lost before marking sent",
                destination=self.destination.name,
                lost=len(items) - marked,
            )
        self.sent += marked
        self._backoff.reset()
        self._monitor.delivered(self.destination.name, marked)
