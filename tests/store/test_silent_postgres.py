"""A PostgreSQL whose network path goes silent (no FIN, no RST: a vanished node, a frozen proxy)
makes writes and reads fail within the silence limit instead of hanging for good, nothing of a
failed write is kept, and the store works again as soon as the path heals.

Real PostgreSQL behind the delivery drills' fault proxy; only the silence limit is shortened.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest
from fastapi.testclient import TestClient

from copbridge.api.app import create_app
from copbridge.config import load_settings
from copbridge.store import StoreUnavailable, open_store
from copbridge.store.postgres import PostgresStore
from copbridge.store.tx import Tx
from tests.api.conftest import example
from tests.conftest import ADMIN_HEADERS, ADMIN_KEY
from tests.delivery.proxy import FaultProxy
from tests.store.factories import detection
from tests.system.harness import ProxyThread

pytestmark = pytest.mark.timeout(120)  # a store that waits on a silent path hangs, not fails

T = TypeVar("T")
DESTS = ("tcp://127.0.0.1:9",)
BOUND_S = 20.0
"""Longest any call may take here (silence limit 1 s, connect timeout 5 s): a liveness bound."""


@pytest.fixture
async def proxied(pg_url: str) -> AsyncIterator[tuple[FaultProxy, str]]:
    proxy = FaultProxy("127.0.0.1", 5432)
    await proxy.start()
    try:
        yield proxy, pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    finally:
        await proxy.stop()


async def test_silent_path_fails_writes_and_reads_then_heals(
    proxied: tuple[FaultProxy, str],
) -> None:
    proxy, url = proxied
    store = PostgresStore(url, silence_limit_s=1.0)
    try:
        await asyncio.to_thread(store.upgrade)
        await asyncio.wrap_future(store.submit_detections([detection("before")], DESTS))
        reader, idle = _OneThread(), _OneThread()
        assert await reader.run(store.get_detection, "before") is not None
        assert await idle.run(store.get_detection, "before") is not None  # then unused a while

        proxy.black_hole()
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(
                asyncio.wrap_future(store.submit_detections([detection("during")], DESTS)),
                BOUND_S,
            )
        with pytest.raises(StoreUnavailable):  # the reader's live connection went silent too
            await asyncio.wait_for(reader.run(store.get_detection, "before"), BOUND_S)
        assert store.stalls.cuts >= 1

        proxy.heal()
        cuts = store.stalls.cuts
        await asyncio.wait_for(
            asyncio.wrap_future(store.submit_detections([detection("after")], DESTS)), BOUND_S
        )
        # The idle thread's connection froze with the path; it is replaced, not waited on.
        assert await idle.run(store.get_detection, "after") is not None
        assert store.stalls.cuts == cuts
        assert await reader.run(store.get_detection, "after") is not None
        assert await reader.run(store.get_detection, "during") is None  # nothing half-kept
        report = await reader.run(store.verify_audit)
        assert report.ok
        reader.close()
        idle.close()
    finally:
        await asyncio.to_thread(store.close)


async def test_a_read_waiting_on_a_silent_path_is_cut(proxied: tuple[FaultProxy, str]) -> None:
    proxy, url = proxied
    store = PostgresStore(url, silence_limit_s=1.0)
    reader = _OneThread()
    try:
        await asyncio.to_thread(store.upgrade)
        assert await reader.run(store.get_detection, "none") is None  # a live read connection
        proxy.black_hole()
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(reader.run(store.get_detection, "none"), BOUND_S)
        assert store.stalls.cuts == 1  # cut by the watch, not ended by a connect timeout
        proxy.heal()
        assert await reader.run(store.get_detection, "none") is None
    finally:
        reader.close()
        await asyncio.to_thread(store.close)


async def test_a_transaction_cut_mid_way_does_not_keep_the_audit_lock(
    proxied: tuple[FaultProxy, str],
) -> None:
    """The server never hears of the cut (the proxy froze the path), so its half-done
    transaction would hold the lock every ingest takes for as long as the frozen path lasts;
    the store ends that backend as soon as it can connect again. (The transaction here turns
    its idle timeout off, as a backend waiting for the rest of a message never gets one.)"""
    proxy, url = proxied
    store = PostgresStore(url, silence_limit_s=1.0)
    loop = asyncio.get_running_loop()

    def lock_then_go_silent(tx: Tx) -> None:
        tx.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
        tx.execute("SELECT pg_advisory_xact_lock(7461002)")  # what every audit append takes
        loop.call_soon_threadsafe(proxy.black_hole)
        time.sleep(0.3)
        tx.execute("SELECT 1")

    try:
        await asyncio.to_thread(store.upgrade)
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(
                asyncio.to_thread(store._write_now, lock_then_go_silent), BOUND_S
            )
        proxy.heal()
        deadline = time.monotonic() + BOUND_S
        while True:
            try:
                await asyncio.wrap_future(store.submit_detections([detection("later")], DESTS))
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "the cut transaction still holds the lock"
                await asyncio.sleep(0.2)
        assert await asyncio.to_thread(store.get_detection, "later") is not None
    finally:
        await asyncio.to_thread(store.close)


def test_api_answers_503_while_postgres_is_silent_and_202_once_it_heals(
    pg_url: str, tmp_path: Path
) -> None:
    proxy = ProxyThread(5432)
    try:
        url = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        store = PostgresStore(url, silence_limit_s=1.0)
        store.upgrade()
        settings = load_settings(
            database_url=url,
            data_dir=tmp_path / "data",
            feed="off",
            run_worker=False,
            bootstrap_key=ADMIN_KEY,
        )
        try:
            with TestClient(create_app(settings, store)) as client:
                post = functools.partial(client.post, "/api/v1/detections", headers=ADMIN_HEADERS)
                first = post(json=example(id="first"))
                assert first.status_code == 202, first.text

                proxy.do(proxy.proxy.black_hole)
                during = post(json=example(id="during"))
                assert during.status_code == 503, during.text

                proxy.do(proxy.proxy.heal)
                again = post(json=example(id="during"))
                assert again.status_code == 202, again.text
                assert again.json()["duplicate"] is False  # the refused attempt left nothing
        finally:
            store.close()
    finally:
        proxy.close()


class _OneThread:
    """Runs blocking store calls on one thread of its own, so they share one read connection."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1)

    async def run(self, call: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, call, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=False)


@pytest.mark.postgres
def test_connections_the_server_ended_are_replaced_without_a_refusal(pg_url: str) -> None:
    """A PostgreSQL restart ends every idle connection: the next read of each thread and the
    next group commit failed once (503s, and /readyz unready), though the server was back."""
    store = open_store(pg_url)
    store.upgrade()
    try:

        def pid(tx: Tx) -> object:
            row = tx.one("SELECT pg_backend_pid()")
            assert row is not None
            return row[0]

        first_reader, first_writer = store._read(pid), store._write_now(pid)
        with psycopg.connect(pg_url, autocommit=True) as admin:
            for backend in (first_reader, first_writer):
                admin.execute("SELECT pg_terminate_backend(%s, 5000)", (backend,))
        store.ping()  # read again on a new connection (it raised StoreUnavailable)
        [accepted] = store.accept_detections([detection("after-restart")], DESTS)
        assert accepted.outcome == "accepted"
        assert store.write_failure(60) is None
    finally:
        store.close()


async def test_a_write_cut_by_the_silence_limit_is_not_tried_again_on_a_new_connection(
    proxied: tuple[FaultProxy, str],
) -> None:
    """The writer's idle connection goes silent: the batch is refused at the silence limit. A
    second try on a new connection (as for one the server ended) would wait a connect timeout
    more on the same silent path; the drill saw requests held through a whole 8 s outage."""
    proxy, url = proxied
    store = PostgresStore(url, silence_limit_s=1.0)
    try:
        await asyncio.to_thread(store.upgrade)
        await asyncio.wrap_future(store.submit_detections([detection("before")], DESTS))
        proxy.black_hole()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as refused:
            await asyncio.wait_for(
                asyncio.wrap_future(store.submit_detections([detection("during")], DESTS)),
                BOUND_S,
            )
        print(f"refused after {time.monotonic() - started:.1f} s: {refused.value}")
        assert "timeout expired" not in str(refused.value)  # no connect attempt was waited on
        assert store.stalls.cuts == 1
        proxy.heal()
        await asyncio.wrap_future(store.submit_detections([detection("after")], DESTS))
    finally:
        await asyncio.to_thread(store.close)
