"""The destinations route shows each link's state from the running delivery service."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from copbridge.api.destinations import router
from copbridge.delivery import DeliveryService, LinkState
from copbridge.store import SqlStore
from tests.cot.taky_server import free_port

from .conftest import make_settings, poll_until, running
from .events import detection_record, queue


async def test_refused_destination_shows_backing_off_with_its_error_and_pending(
    sqlite_store: SqlStore, sqlite_url: str
) -> None:
    url = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    queue(sqlite_store, [url], [detection_record("waiting")])
    app = FastAPI()
    app.include_router(router)
    service = DeliveryService(make_settings(sqlite_url, destinations=url), sqlite_store)
    app.state.delivery = service
    async with running(service):
        await poll_until(
            lambda: (
                service.snapshot()[0].state is not LinkState.CONNECTING
                and service.snapshot()[0].pending == 1
            ),
            5,
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            answer = await client.get("/api/v1/destinations")
    assert answer.status_code == 200
    (row,) = answer.json()
    assert row["name"] == url
    assert row["state"] in ("backing_off", "failing")
    assert "connect failed" in row["last_error"]
    assert row["pending"] == 1
    assert row["oldest_pending_age_s"] >= 0
    changes = sqlite_store.audit_records(kind="destination.state_changed")
    assert changes[0].data["from"] == "connecting"
    assert changes[0].subject == url
