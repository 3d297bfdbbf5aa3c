"""The audit list over HTTP: its cursor fits 64 bits (a longer one is 422 naming it; the fuzzer
found a 500), and a record edited into something unreadable is named, not a bare 500."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient


@pytest.mark.parametrize("cursor", ["39871132349378638670", "99999999999999999999"])
def test_an_audit_cursor_beyond_64_bits_is_422_not_500(client: TestClient, cursor: str) -> None:
    answer = client.get("/api/v1/audit", params={"cursor": cursor})
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"][0]["field"] == "query.cursor"


def test_the_largest_audit_cursor_still_reads(client: TestClient) -> None:
    answer = client.get("/api/v1/audit", params={"cursor": "9" * 18})
    assert answer.status_code == 200, answer.text
    assert answer.json()["items"] == []


def test_an_unreadable_record_is_named_by_the_list_and_by_verify(
    client: TestClient, tmp_path: Path
) -> None:
    assert client.get("/api/v1/audit/verify").json()["ok"] is True
    assert client.post("/api/v1/keys", json={"name": "k", "scopes": ["audit:read"]}).is_success
    with sqlite3.connect(tmp_path / "api.db", isolation_level=None) as db:
        db.execute("DROP TRIGGER audit_no_update")
        db.execute("UPDATE audit SET data = CAST(data AS BLOB) WHERE seq = 1")
    listed = client.get("/api/v1/audit")
    assert listed.status_code == 500
    assert listed.json()["detail"].startswith("record 1 cannot be read: ")
    verified = client.get("/api/v1/audit/verify").json()
    assert (verified["ok"], verified["first_broken_seq"]) == (False, 1)
