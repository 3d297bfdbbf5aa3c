"""Dependency aliases shared by the routes (``StoreDep``).

``async`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop
per dependency per request for what is only an attribute read. The ingest routes read the
pipeline and settings off ``request.app.state`` themselves: they are the hottest path, and each
dependency solved costs tens of µs there.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from copbridge.store import SqlStore


async def _store(request: Request) -> SqlStore:
    store: SqlStore = request.app.state.store
    return store


StoreDep = Annotated[SqlStore, Depends(_store)]
