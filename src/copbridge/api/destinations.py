"""``GET /api/v1/destinations``: each TAK destination's link state and outbox figures."""

from __future__ import annotations

from fastapi import APIRouter, Request

from copbridge.delivery import DeliveryService, DestinationState

router = APIRouter(prefix="/api/v1", tags=["destinations"])


@router.get("/destinations")
async def list_destinations(request: Request) -> list[DestinationState]:
    """State, last error, pending, delivered and oldest pending age of every destination."""
    delivery: DeliveryService | None = getattr(request.app.state, "delivery", None)
    if delivery is None:
        return []
    return delivery.snapshot()
