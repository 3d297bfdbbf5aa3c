"""Fixtures of the store suites."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from copbridge.store import SqlStore, open_store


@pytest.fixture
def replicas(pg_url: str) -> Iterator[list[SqlStore]]:
    """Three stores on one PostgreSQL schema, as three replicas of the service would hold."""
    opened = [open_store(pg_url) for _ in range(3)]
    opened[0].upgrade()
    try:
        yield opened
    finally:
        for replica in opened:
            replica.close()
