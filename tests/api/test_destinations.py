"""``GET /api/v1/destinations`` through the app: every configured destination with its figures."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from tests.api.conftest import DESTINATIONS, taken_now


def test_destinations_list_every_configured_one_with_pending_events(client: TestClient) -> None:
    assert client.post("/api/v1/detections", json=taken_now()).status_code == 202
    deadline = time.monotonic() + 10
    while True:
        answer = client.get("/api/v1/destinations")
        assert answer.status_code == 200
        views = {v["name"]: v for v in answer.json()}
        assert set(views) == set(DESTINATIONS.split(","))
        if all(v["pending"] == 2 for v in views.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for view in views.values():
        # The detection's event and the sensor's platform event wait for each destination.
        assert view["pending"] == 2
        assert view["sent"] == view["delivered"] == 0
        assert view["oldest_pending_age_s"] is not None


def test_destinations_need_a_credential(client: TestClient) -> None:
    assert client.get("/api/v1/destinations", headers={"Authorization": ""}).status_code == 401
