"""Shared fixtures: a fresh store per test on every adapter (SQLite file, real PostgreSQL)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

from copbridge.security.keys import format_key
from copbridge.store import SqlStore, open_store

#: A well-formed admin key for tests: pass it as ``bootstrap_key`` and send it as a Bearer.
ADMIN_KEY = format_key("a11ce5000001", "TestAdminSecret0123456789abcdefg")
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}

PG_ADMIN_URL = os.environ.get(
    "COPBRIDGE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run, dropped afterwards.

    Fails (never skips) when the server is down: CI must run the PostgreSQL suite.
    """
    name = f"copbridge_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is not reachable: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """A URL whose connections live in a schema of their own, so tests never see each other."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return f"{pg_database}?options={quote(f'-csearch_path={schema}')}"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'copbridge.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'copbridge.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(store_url: str) -> Iterator[SqlStore]:
    opened = open_store(store_url)
    opened.upgrade()
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def admin_key() -> str:
    """The test admin key; an app built with ``bootstrap_key=admin_key`` accepts it."""
    return ADMIN_KEY
