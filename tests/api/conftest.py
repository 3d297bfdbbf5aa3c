"""An app on a fresh store per test, driven through HTTP by Starlette's test client."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from copbridge.api.app import create_app
from copbridge.config import Settings, load_settings
from tests.conftest import ADMIN_HEADERS, ADMIN_KEY

EXAMPLE: dict[str, Any] = json.loads(
    (Path(__file__).parent / "data" / "contract_example.json").read_text()
)
DESTINATIONS = "tcp://127.0.0.1:9,file:///dev/null"


def example(**changes: Any) -> dict[str, Any]:
    """The contract's example detection, deep-copied, with top-level fields replaced."""
    body = copy.deepcopy(EXAMPLE)
    body.update(changes)
    return body


def taken_now(**changes: Any) -> dict[str, Any]:
    """The example as a detection taken just now (the contract's example is days old: it is
    stale on arrival, and so shows no platform event)."""
    return example(**{"time": datetime.now(UTC).isoformat(), **changes})


@pytest.fixture
def auth_headers() -> dict[str, str]:
    """Credentials every protected call carries: the bootstrap admin key of ``app_settings``."""
    return dict(ADMIN_HEADERS)


def app_settings(tmp_path: Path, url: str | None = None, **overrides: Any) -> Settings:
    return load_settings(
        database_url=url or f"sqlite:///{tmp_path / 'api.db'}",
        data_dir=tmp_path,
        feed="off",
        run_worker=False,
        # The helper process costs each app a second of start-up; tests/api/test_prepare_process.py
        # holds its answers to these, and the system tests run serve with it on.
        **{
            "bootstrap_key": ADMIN_KEY,
            "prepare_process": False,
            "destinations": DESTINATIONS,
            **overrides,
        },
    )


@pytest.fixture
def client(tmp_path: Path, auth_headers: dict[str, str]) -> Iterator[TestClient]:
    with TestClient(create_app(app_settings(tmp_path)), headers=auth_headers) as test_client:
        yield test_client
