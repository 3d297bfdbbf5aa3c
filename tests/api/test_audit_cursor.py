"""The audit list's cursor fits 64 bits: a longer one is 422 naming it (the fuzzer found a 500)."""

from __future__ import annotations

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
