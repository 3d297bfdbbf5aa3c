"""Dependency aliases shared by the routes (``StoreDep``, ``SettingsDep``, ``PipelineDep``).

They are ``async`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, a
thread hop per dependency per request for what is only an attribute read.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from copbridge.config import Settings
from copbridge.pipeline import Pipeline
from copbridge.store import SqlStore


async def _store(request: Request) -> SqlStore:
    store: SqlStore = request.app.state.store
    return store


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _pipeline(request: Request) -> Pipeline:
    pipeline: Pipeline = request.app.state.pipeline
    return pipeline


StoreDep = Annotated[SqlStore, Depends(_store)]
SettingsDep = Annotated[Settings, Depends(_settings)]
PipelineDep = Annotated[Pipeline, Depends(_pipeline)]
