"""The link monitor: per destination state, counts and ages, as Prometheus gauges and audit records.

Couriers report what happens on their links; a refresher adds the outbox figures from the store.
``snapshot()`` answers from memory, so the API never waits on a TAK server or a slow query.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum

from copbridge.delivery.destinations import Destination
from copbridge.logs import get_logger
from copbridge.metrics import (
    DELIVERY_ERRORS,
    DELIVERY_EXPIRED,
    DELIVERY_SENT,
    DESTINATION_OLDEST,
    DESTINATION_PENDING,
    DESTINATION_UP,
)
from copbridge.store import AuditEntry, Store

_log = get_logger("copbridge.delivery")

#: Failed attempts in a row after which a link is reported ``failing`` rather than backing off.
FAILING_AFTER = 3
_UNAUDITED_MAX = 1000  # state changes held while the store cannot take them


class LinkState(StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKING_OFF = "backing_off"
    FAILING = "failing"


@dataclass(frozen=True, slots=True)
class DestinationState:
    """What ``GET /api/v1/destinations`` shows for one destination."""

    name: str
    label: str | None
    state: LinkState
    last_error: str | None
    last_error_at: datetime | None
    last_success: datetime | None
    failures: int
    pending: int
    oldest_pending_age_s: float | None
    sent: int
    expired: int
    delivered: int
    """The contract's name for ``sent`` (events written to the link and, where the peer answers
    pings, acknowledged); both are shown so neither kind of client breaks."""


def _now() -> datetime:
    return datetime.now(UTC)


class LinkMonitor:
    """Holds each destination's state; writes ``destination.state_changed`` on every change."""

    def __init__(self, store: Store, destinations: Sequence[Destination], actor: str) -> None:
        self._store = store
        self._actor = actor
        self._states = {
            d.name: DestinationState(
                name=d.name,
                label=d.label,
                state=LinkState.CONNECTING,
                last_error=None,
                last_error_at=None,
                last_success=None,
                failures=0,
                pending=0,
                oldest_pending_age_s=None,
                sent=0,
                delivered=0,
                expired=0,
            )
            for d in destinations
        }
        self._expired_seen: dict[str, int] = {}
        # State changes the store could not take yet (it was down or full): written with the
        # next change or refresh, oldest first, each saying when it happened.
        self._unaudited: list[AuditEntry] = []
        self._auditing = asyncio.Lock()
        for name in self._states:
            DESTINATION_UP.labels(name).set(0)

    def snapshot(self) -> list[DestinationState]:
        return list(self._states.values())

    def state(self, name: str) -> DestinationState:
        return self._states[name]

    async def _change(self, name: str, new: DestinationState) -> None:
        old = self._states[name]
        self._states[name] = new
        if old.state == new.state:
            return
        DESTINATION_UP.labels(name).set(1 if new.state is LinkState.CONNECTED else 0)
        _log.info("destination state", destination=name, state=str(new.state), error=new.last_error)
        if len(self._unaudited) >= _UNAUDITED_MAX:
            _log.error("destination state change not audited: too many held", destination=name)
            return
        self._unaudited.append(
            AuditEntry(
                kind="destination.state_changed",
                subject=name,
                actor=self._actor,
                data={
                    "from": str(old.state),
                    "to": str(new.state),
                    "error": new.last_error,
                    "at": _now().isoformat(),
                },
            )
        )
        await self._write_audit()

    async def _write_audit(self) -> None:
        async with self._auditing:  # one writer: two couriers' changes are written once each
            entries = self._unaudited[:]
            if not entries:
                return
            try:
                await asyncio.to_thread(self._store.append_audit, entries)
            except Exception as exc:  # the audit must not take the link down with it
                _log.warning(
                    "cannot audit destination state yet", held=len(entries), error=str(exc)
                )
                return
            del self._unaudited[: len(entries)]

    async def connected(self, name: str) -> None:
        await self._change(name, replace(self._states[name], state=LinkState.CONNECTED))

    async def failed(self, name: str, error: str) -> None:
        DELIVERY_ERRORS.labels(name).inc()
        old = self._states[name]
        failures = old.failures + 1
        state = LinkState.FAILING if failures >= FAILING_AFTER else LinkState.BACKING_OFF
        await self._change(
            name,
            replace(old, state=state, failures=failures, last_error=error, last_error_at=_now()),
        )

    def delivered(self, name: str, count: int) -> None:
        DELIVERY_SENT.labels(name).inc(count)
        self._states[name] = replace(self._states[name], last_success=_now(), failures=0)

    async def refresh(self) -> None:
        """Read the outbox figures of every destination from the store and update the gauges."""
        if not self._states:
            return
        await self._write_audit()
        stats = await asyncio.to_thread(self._store.outbox_stats, list(self._states))
        now_us = time.time_ns() // 1000
        for row in stats:
            age = None if row.oldest_pending_us is None else (now_us - row.oldest_pending_us) / 1e6
            DESTINATION_PENDING.labels(row.destination).set(row.pending)
            DESTINATION_OLDEST.labels(row.destination).set(age or 0.0)
            before = self._expired_seen.get(row.destination)
            if before is not None and row.expired > before:
                DELIVERY_EXPIRED.labels(row.destination).inc(row.expired - before)
            self._expired_seen[row.destination] = row.expired
            self._states[row.destination] = replace(
                self._states[row.destination],
                pending=row.pending,
                oldest_pending_age_s=age,
                sent=row.sent,
                delivered=row.sent,
                expired=row.expired,
            )
