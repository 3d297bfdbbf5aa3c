"""Liveness, readiness (the store answers) and the Prometheus exposition."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from copbridge.api.deps import StoreDep
from copbridge.config import Settings
from copbridge.store import StoreUnavailable

router = APIRouter(tags=["health"])


@router.get("/livez")
async def livez() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get(
    "/readyz", responses={503: {"description": "the store does not answer or refused a write"}}
)
async def readyz(store: StoreDep, request: Request) -> Response:
    """The store answers a query and has not refused a write lately; TAK outages do not make us
    unready (ingest keeps working)."""
    try:
        await run_in_threadpool(store.ping)
    except StoreUnavailable as exc:
        return JSONResponse({"status": "unavailable", "reason": str(exc)}, status_code=503)
    settings: Settings = request.app.state.settings
    # A window, not "until a write succeeds": taken out of service, no write would come to
    # show that the store is back.
    refused = store.write_failure(settings.ready_after_write_failure_s)
    if refused is not None:
        reason = (
            f"the store refused a write in the last {settings.ready_after_write_failure_s:g} s: "
        )
        return JSONResponse({"status": "unavailable", "reason": reason + refused}, status_code=503)
    return JSONResponse({"status": "ok", "store": store.dialect})


@router.get("/metrics", response_class=Response)
async def metrics() -> Response:
    """Prometheus text exposition."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
