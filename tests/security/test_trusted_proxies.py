"""X-Forwarded-For names the client only when it comes from a configured proxy: behind an
ingress each client gets its own per-IP limit and its own IP in the audit; without the setting
the header is ignored, even from 127.0.0.1 (which uvicorn alone would trust)."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.system.processes import Serve, run_copbridge, start_serve

ATTACKER = {"X-Forwarded-For": "203.0.113.5"}
OPERATOR = {"X-Forwarded-For": "198.51.100.7"}


def _revoke_codes(serve: Serve, headers: dict[str, str], times: int) -> list[int]:
    with httpx.Client(base_url=serve.url, timeout=10) as client:
        return [
            client.post("/api/v1/auth/revoke", json={"token": "x"}, headers=headers).status_code
            for _ in range(times)
        ]


def _failed_ips(serve: Serve) -> set[str]:
    with httpx.Client(base_url=serve.url, timeout=10, headers=serve.headers) as client:
        client.get("/api/v1/detections", headers={"Authorization": "Bearer cpb_bad"})
        items = client.get("/api/v1/audit", params={"kind": "auth.failed"}).json()["items"]
    return {item["data"]["ip"] for item in items}


def test_behind_a_trusted_proxy_each_client_has_its_own_limit_and_address(
    tmp_path: Path,
) -> None:
    serve = start_serve(
        tmp_path,
        {"COPBRIDGE_TRUSTED_PROXIES": "127.0.0.0/8", "COPBRIDGE_RATE_LIMIT_AUTH": "3/minute"},
    )
    try:
        assert _revoke_codes(serve, ATTACKER, 5) == [200, 200, 200, 429, 429]
        assert _revoke_codes(serve, OPERATOR, 1) == [200]  # another client behind the proxy
        with httpx.Client(base_url=serve.url, timeout=10) as client:
            client.get("/api/v1/detections", headers={**ATTACKER, "X-API-Key": "cpb_bad"})
        assert "203.0.113.5" in _failed_ips(serve)
    finally:
        serve.stop()


def test_without_trusted_proxies_the_header_is_ignored(tmp_path: Path) -> None:
    serve = start_serve(tmp_path, {"COPBRIDGE_RATE_LIMIT_AUTH": "3/minute"})
    try:
        assert _revoke_codes(serve, ATTACKER, 3) == [200, 200, 200]
        # A forged header does not buy a fresh budget: both are the same loopback client.
        assert _revoke_codes(serve, OPERATOR, 1) == [429]
    finally:
        serve.stop()
    serve = start_serve(tmp_path, port=serve.port)
    try:
        with httpx.Client(base_url=serve.url, timeout=10) as client:
            client.get("/api/v1/detections", headers={**ATTACKER, "X-API-Key": "cpb_bad"})
        assert _failed_ips(serve) == {"127.0.0.1"}
    finally:
        serve.stop()


def test_a_malformed_proxy_entry_is_one_clear_line(tmp_path: Path) -> None:
    result = run_copbridge(
        ["serve"], {"COPBRIDGE_TRUSTED_PROXIES": "10.0.0.0/8,ingress.local"}, tmp_path
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "COPBRIDGE_TRUSTED_PROXIES" in lines[0]
    assert "ingress.local" in lines[0]
