"""The application factory: the composition root that wires settings, store and routes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from copbridge import __version__
from copbridge.api import (
    audit_routes,
    auth_routes,
    destinations,
    detections,
    errors,
    health,
    keys_routes,
    security_headers,
)
from copbridge.api.auth import AUTHORIZE, open_guard
from copbridge.api.body_limit import BodyLimit
from copbridge.api.ingest_route import IngestRoutes
from copbridge.api.middleware import RequestContext
from copbridge.api.prepare_process import BATCH_NICENESS, PrepareProcess
from copbridge.config import Settings
from copbridge.delivery import DeliveryService
from copbridge.logs import get_logger
from copbridge.metrics import observe_commit
from copbridge.model import Detection
from copbridge.pipeline import Pipeline
from copbridge.store import SqlStore, open_store

_log = get_logger("copbridge.api")


def build_store(settings: Settings) -> SqlStore:
    return open_store(
        settings.database_url,
        checkpoint_every_s=settings.sqlite_checkpoint_s,
        max_delay_s=settings.group_commit_max_delay_ms / 1000,
        max_items=settings.group_commit_max_items,
        observe=observe_commit,
        sqlite_max_pages=settings.sqlite_max_pages,
        pg_silence_limit_s=settings.pg_silence_limit_s,
        images_dir=settings.data_dir / "images",
    )


def create_app(settings: Settings, store: SqlStore | None = None) -> FastAPI:
    """Build the API. A store passed in is used as is (and not closed); else one is opened."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = store is None
        active = build_store(settings) if store is None else store
        if owned and settings.migrate_on_start:
            active.upgrade()
        app.state.store = active
        guard = open_guard(app, settings, active)
        # Delivery: couriers unless run_worker is off, the CoT feed unless feed is "off".
        delivery = DeliveryService(settings, active)
        await delivery.start()
        app.state.delivery = delivery
        # After each commit the couriers and the feed wake at once instead of at their next poll.
        app.state.pipeline = Pipeline(
            settings,
            active,
            [d.url for d in settings.destination_settings()],
            on_stored=delivery.notify,
        )
        # Helper processes prepare single detections and batches, one each: a single one never
        # waits behind a 1,000-item batch, nor for the CPU it uses (api/prepare_process.py).
        helpers = (
            PrepareProcess(settings, "single"),
            PrepareProcess(settings, "batch", niceness=BATCH_NICENESS),
        )
        if settings.prepare_process:
            app.state.prepare_process, app.state.batch_prepare_process = helpers
            await asyncio.gather(*(helper.start() for helper in helpers))
        await active.attach_loop()
        _log.info("started", store=settings.redacted_database_url(), version=__version__)
        try:
            yield
        finally:
            await asyncio.gather(*(helper.close() for helper in helpers))
            await delivery.stop()
            await active.detach_loop()
            await guard.close()
            if owned:
                active.close()
            _log.info("stopped")

    app = FastAPI(
        title="copbridge",
        version=__version__,
        summary="AI detections to geolocated Cursor-on-Target events for TAK.",
        lifespan=lifespan,
        dependencies=[AUTHORIZE],  # every route: rate limits, credential, scope (api/scopes.py)
        # No 307 to the slash-less path: it was built from the client's Host header (an open
        # redirect, answered before any credential was checked); a wrong path is a 404.
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.prepare_process = None  # set at start-up when the helpers are on
    app.state.batch_prepare_process = None
    errors.install(app)
    app.add_middleware(IngestRoutes, api=app)  # innermost: everything below wraps it too
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContext)
    security_headers.install(app, settings)
    # Routes are matched in order: the ingest routes, by far the most called, come first.
    app.include_router(detections.router)
    app.include_router(health.router)
    app.include_router(health.router, prefix="/api/v1", include_in_schema=False)
    app.include_router(destinations.router)
    app.include_router(auth_routes.router)
    app.include_router(auth_routes.jwks_router)
    app.include_router(keys_routes.router)
    app.include_router(audit_routes.router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the contract models the routes parse themselves (for speed)."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        detection = Detection.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(detection.pop("$defs", {}))
        components["Detection"] = detection
        app.openapi_schema = errors.document(schema)
    return app.openapi_schema
