"""The ingest routes taken past FastAPI's router answer exactly as the routed app would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from copbridge.api import detections
from copbridge.api.app import create_app
from copbridge.api.ingest_route import IngestRoutes, _route_path
from copbridge.store import StoreUnavailable
from tests.api.conftest import app_settings, example


def _shortcut(app: FastAPI) -> IngestRoutes:
    """The IngestRoutes layer of a started app's middleware stack."""
    layer: Any = app.middleware_stack
    while layer is not None and not isinstance(layer, IngestRoutes):
        layer = getattr(layer, "app", None)
    assert isinstance(layer, IngestRoutes), "the ingest routes are not in the middleware stack"
    return layer


def test_both_ingest_routes_are_dispatched_directly(client: TestClient) -> None:
    assert client.post("/api/v1/detections", json=example(id="direct-1")).status_code == 202
    table = _shortcut(client.app)._table()  # type: ignore[arg-type]
    assert {path: handler for path, (_, handler) in table.items()} == {
        "/api/v1/detections": detections.post_detection,
        "/api/v1/detections/batch": detections.post_batch,
    }


def test_direct_dispatch_keeps_the_route_template_in_the_metrics(client: TestClient) -> None:
    assert client.post("/api/v1/detections", json=example(id="direct-2")).status_code == 202
    metrics = client.get("/metrics").text
    assert 'route="/api/v1/detections",status="202"' in metrics


def test_missing_credential_is_401_with_the_challenge(tmp_path: Path) -> None:
    with TestClient(create_app(app_settings(tmp_path))) as anonymous:
        response = anonymous.post("/api/v1/detections", json=example(id="anon"))
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "x-request-id" in response.headers


def test_store_refusal_goes_through_the_apps_own_handler(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = client.app.state.pipeline  # type: ignore[attr-defined]

    async def refuse(*_: object, **__: object) -> object:
        raise StoreUnavailable("disk gone")

    monkeypatch.setattr(pipeline, "commit", refuse)
    response = client.post("/api/v1/detections", json=example(id="refused"))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "disk gone" in response.json()["detail"]


def test_an_unexpected_error_is_a_plain_500(
    tmp_path: Path, auth_headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(app_settings(tmp_path))
    with TestClient(app, headers=auth_headers, raise_server_exceptions=False) as broken:

        def crash(*_: object, **__: object) -> object:
            raise RuntimeError("bug")

        monkeypatch.setattr(app.state.pipeline, "prepare", crash)
        response = broken.post("/api/v1/detections", json=example(id="bug"))
    assert response.status_code == 500
    assert "bug" not in response.text


def test_a_root_path_in_front_is_stripped_before_matching(
    tmp_path: Path, auth_headers: dict[str, str]
) -> None:
    app = create_app(app_settings(tmp_path))
    with TestClient(app, headers=auth_headers, root_path="/copbridge") as proxied:
        response = proxied.post("/api/v1/detections", json=example(id="behind-proxy"))
        assert response.status_code == 202
        assert proxied.get("/api/v1/detections/behind-proxy").status_code == 200
    scope = {"path": "/copbridge/api/v1/detections", "root_path": "/copbridge"}
    assert _route_path(scope) == "/api/v1/detections"
