"""Fixtures for the delivery tests: a store, taky over TCP or TLS, a running delivery service."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from copbridge.config import DestinationSettings, Settings
from copbridge.delivery import DeliveryService
from copbridge.store import SqlStore, open_store

from .taky import P12_PASSWORD, Taky


@pytest.fixture
def sqlite_store(sqlite_url: str) -> Iterator[SqlStore]:
    opened = open_store(sqlite_url, max_delay_s=0.0005)
    opened.upgrade()
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def taky_tcp(tmp_path: Path) -> Iterator[Taky]:
    server = Taky(tmp_path / "taky")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def taky_tls(tmp_path: Path) -> Iterator[Taky]:
    server = Taky(tmp_path / "taky-tls", tls=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def taky_destination(taky: Taky, **options: Any) -> DestinationSettings:
    """How copbridge reaches this taky: tcp://, or tls:// with the takyctl client .p12 and CA."""
    if taky.tls is None:
        return DestinationSettings(url=f"tcp://{taky.host}:{taky.port}", **options)
    return DestinationSettings(
        url=f"tls://{taky.host}:{taky.port}",
        client_cert=taky.tls.copbridge.p12,
        client_password=P12_PASSWORD,
        ca_file=taky.tls.ca,
        expected_hostname="localhost",
        **options,
    )


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "feed": "off",
        "delivery_poll_s": 0.2,
        "delivery_backoff_min_s": 0.2,
        "delivery_backoff_max_s": 1.0,
    }
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def running(service: DeliveryService) -> AsyncIterator[DeliveryService]:
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def poll_until(condition: Callable[[], bool], seconds: float) -> None:
    """Wait for a condition on something that has no event to await (a file, a counter)."""
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 - nothing to await but the condition itself
            await asyncio.sleep(0.02)
