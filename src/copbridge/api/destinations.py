"""``GET /api/v1/destinations``: each TAK destination's link state and outbox figures."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request
from pydantic import BaseModel

from copbridge.delivery import DeliveryService

router = APIRouter(prefix="/api/v1", tags=["destinations"])


class DestinationView(BaseModel):
    name: str
    label: str | None
    state: str
    last_error: str | None
    last_error_at: datetime | None
    last_success: datetime | None
    failures: int
    pending: int
    oldest_pending_age_s: float | None
    sent: int
    expired: int


@router.get("/destinations")
async def list_destinations(request: Request) -> list[DestinationView]:
    """State, last error, pending, delivered and oldest pending age of every destination."""
    delivery: DeliveryService | None = getattr(request.app.state, "delivery", None)
    if delivery is None:
        return []
    return [
        DestinationView(
            name=s.name,
            label=s.label,
            state=str(s.state),
            last_error=s.last_error,
            last_error_at=s.last_error_at,
            last_success=s.last_success,
            failures=s.failures,
            pending=s.pending,
            oldest_pending_age_s=s.oldest_pending_age_s,
            sent=s.sent,
            expired=s.expired,
        )
        for s in delivery.snapshot()
    ]
