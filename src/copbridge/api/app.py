"""The application factory: the composition root that wires settings, store and routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from copbridge import __version__
from copbridge.api import health
from copbridge.api.middleware import RequestContext
from copbridge.config import Settings
from copbridge.logs import get_logger
from copbridge.metrics import observe_commit
from copbridge.store import SqlStore, open_store

_log = get_logger("copbridge.api")


def build_store(settings: Settings) -> SqlStore:
    return open_store(
        settings.database_url,
        checkpoint_every_s=settings.sqlite_checkpoint_s,
        max_delay_s=settings.group_commit_max_delay_ms / 1000,
        max_items=settings.group_commit_max_items,
        observe=observe_commit,
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
        _log.info("started", store=settings.redacted_database_url(), version=__version__)
        try:
            yield
        finally:
            if owned:
                active.close()
            _log.info("stopped")

    app = FastAPI(
        title="copbridge",
        version=__version__,
        summary="AI detections to geolocated Cursor-on-Target events for TAK.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.add_middleware(RequestContext)
    app.include_router(health.router)
    return app
