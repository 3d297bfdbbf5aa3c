"""A link that goes half-open (the proxy stops forwarding, no FIN, no RST) is noticed through
unanswered keepalive pings and recovered within the keepalive bound, with nothing lost — over
plain TCP and over TLS with client certificates."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest

from copbridge.delivery import DeliveryService
from copbridge.store import SqlStore

from .conftest import make_settings, running, taky_destination
from .events import detection_record, has_uid, queue, uid_of
from .proxy import FaultProxy
from .taky import Taky

pytestmark = pytest.mark.timeout(60)

KEEPALIVE_S = 1.0
BACKOFF_MAX_S = 0.5


@pytest.mark.parametrize("scheme", ["tcp", "tls"])
async def test_half_open_link_is_detected_and_recovered_within_the_keepalive_bound(
    scheme: str, request: pytest.FixtureRequest, sqlite_store: SqlStore, sqlite_url: str
) -> None:
    taky: Taky = request.getfixturevalue(f"taky_{scheme}")
    proxy = FaultProxy(taky.host, taky.port)
    await proxy.start()
    receiver = taky.client()
    receiver.registered("rx", datetime.now(UTC))
    url = f"{scheme}://127.0.0.1:{proxy.port}"
    # Through the proxy, with the site's certificates when TLS (the server is still "localhost").
    destination = taky_destination(taky, keepalive_s=KEEPALIVE_S).model_copy(update={"url": url})
    settings = make_settings(
        sqlite_url, destinations=[destination], delivery_backoff_max_s=BACKOFF_MAX_S
    )
    try:
        async with running(DeliveryService(settings, sqlite_store)) as service:
            before = detection_record("before-cut")
            queue(sqlite_store, [url], [before])
            service.notify()
            await asyncio.to_thread(receiver.wait_for, has_uid(uid_of(before)), 10)
            await asyncio.sleep(
                1.5 * KEEPALIVE_S
            )  # a ping has been answered: taky is known to pong

            proxy.freeze()
            cut = time.monotonic()
            during = detection_record("during-cut")
            queue(sqlite_store, [url], [during])
            service.notify()
            # The event is written into the frozen path and counted as drained; it must still
            # arrive, re-sent after the reconnect.
            bound = 2 * KEEPALIVE_S + BACKOFF_MAX_S + 1.5
            await asyncio.to_thread(receiver.wait_for, has_uid(uid_of(during)), bound + 2)
            elapsed = time.monotonic() - cut
            assert elapsed <= bound, f"recovered after {elapsed:.2f} s, bound {bound:.2f} s"
            assert proxy.connections >= 2
            (state,) = service.snapshot()
            assert state.last_error is not None
            assert "keepalive" in state.last_error
    finally:
        receiver.close()
        await proxy.stop()
