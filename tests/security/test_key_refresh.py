"""Renewing a cached key verification never takes the key away from requests in the meantime,
and a key the store now calls revoked leaves the cache when the renewal sees it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from copbridge.security.keys import KeyRing, hash_secret, mint_key, now_us
from copbridge.store import ApiKeyRecord, SqlStore, open_store

PEPPER = b"p" * 32


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    opened = open_store(f"sqlite:///{tmp_path / 'keys.db'}")
    opened.upgrade()
    yield opened
    opened.close()


def _key(store: SqlStore) -> tuple[str, str]:
    parts, text = mint_key()
    record = ApiKeyRecord(
        parts.key_id,
        "drone",
        hash_secret(PEPPER, parts),
        ("detections:write",),
        now_us(),
        None,
        None,
        None,
    )
    store.create_key(record, actor="test")
    return parts.key_id, text


def test_the_cached_answer_serves_while_a_renewal_waits_for_the_store(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyring = KeyRing(store, PEPPER, ttl_s=5.0)
    key_id, text = _key(store)
    assert keyring.verify(text)[1] == "ok"
    asked, release = threading.Event(), threading.Event()
    get_key = store.get_key

    def slow_get_key(wanted: str) -> ApiKeyRecord | None:
        asked.set()
        release.wait(5)
        return get_key(wanted)

    monkeypatch.setattr(store, "get_key", slow_get_key)
    renewal = threading.Thread(target=keyring.verify, args=(text,), kwargs={"refresh": True})
    renewal.start()
    assert asked.wait(5)
    cached = keyring.cached(text)  # the store is being asked right now
    assert cached is not None
    assert cached.key_id == key_id
    release.set()
    renewal.join(5)
    assert keyring.cached(text) is not None


def test_a_renewal_that_finds_the_key_revoked_drops_it(store: SqlStore) -> None:
    keyring = KeyRing(store, PEPPER, ttl_s=5.0)
    key_id, text = _key(store)
    assert keyring.verify(text)[1] == "ok"
    store.revoke_key(key_id, now_us(), actor="another replica")
    assert keyring.cached(text) is not None  # not yet seen here
    assert keyring.verify(text, refresh=True)[1] == "revoked key"
    assert keyring.cached(text) is None
