"""Fixtures for the CoT tests: the XSD validators and a real TAK server (taky) with clients."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from .schemas import CotSchemas
from .taky_server import CotClient, TakyServer, run_taky


@pytest.fixture(scope="session")
def cot_schemas() -> CotSchemas:
    return CotSchemas()


@pytest.fixture(scope="module")
def taky(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TakyServer]:
    with run_taky(tmp_path_factory.mktemp("taky")) as server:
        yield server


@pytest.fixture
def tak_clients(taky: TakyServer) -> Iterator[tuple[CotClient, CotClient]]:
    """Two connected clients (sender, receiver), both known to the server's router."""
    sender = CotClient(taky.host, taky.port)
    receiver = CotClient(taky.host, taky.port)
    try:
        now = datetime.now(UTC)
        sender.registered("sender", now)
        receiver.registered("receiver", now)
        yield sender, receiver
    finally:
        sender.close()
        receiver.close()
