"""Dependency aliases shared by the routes (``StoreDep``, ``SettingsDep``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from copbridge.config import Settings
from copbridge.pipeline import Pipeline
from copbridge.store import SqlStore


def _store(request: Request) -> SqlStore:
    store: SqlStore = request.app.state.store
    return store


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _pipeline(request: Request) -> Pipeline:
    pipeline: Pipeline = request.app.state.pipeline
    return pipeline


StoreDep = Annotated[SqlStore, Depends(_store)]
SettingsDep = Annotated[Settings, Depends(_settings)]
PipelineDep = Annotated[Pipeline, Depends(_pipeline)]
