"""Two real ``copbridge serve`` replicas on one PostgreSQL and one Redis share keys, tokens,
revocations and rate limits."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import ADMIN_HEADERS
from tests.security.helpers import bearer
from tests.system.processes import Serve, start_serve

TTL_S = 1.0


def _replicas(tmp_path: Path, pg_url: str) -> tuple[Serve, Serve]:
    env = {
        "COPBRIDGE_DATABASE_URL": pg_url,
        "COPBRIDGE_RUN_WORKER": "false",
        "COPBRIDGE_RATE_LIMIT_STORAGE": "redis://127.0.0.1:6379/0",
        "COPBRIDGE_RATE_LIMIT_PREFIX": f"replicas-{uuid.uuid4().hex[:12]}",
        "COPBRIDGE_RATE_LIMIT_CREDENTIAL": "6/minute",
        "COPBRIDGE_KEY_CACHE_TTL_S": str(TTL_S),
    }
    # Same data folder: the pepper and the generated signing keys are shared like the store.
    first = start_serve(tmp_path, env=env)
    try:
        second = start_serve(tmp_path, env=env)
    except Exception:
        first.stop()
        raise
    return first, second


def _until(check: Callable[[], bool], limit_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        if check():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"not within {limit_s} s")


def test_replicas_share_keys_tokens_revocations_and_limits(tmp_path: Path, pg_url: str) -> None:
    a, b = _replicas(tmp_path, pg_url)
    try:
        with (
            httpx.Client(base_url=a.url, timeout=10) as on_a,
            httpx.Client(base_url=b.url, timeout=10) as on_b,
        ):
            # A key made on A works on B; a token issued by A verifies on B.
            key = on_a.post(
                "/api/v1/keys",
                json={"name": "shared", "scopes": ["detections:read"]},
                headers=ADMIN_HEADERS,
            ).json()["key"]
            token = on_a.post("/api/v1/auth/token", json={"api_key": key}).json()["access_token"]
            assert on_b.get("/api/v1/detections", headers=bearer(key)).status_code == 200
            assert on_b.get("/api/v1/detections", headers=bearer(token)).status_code == 200

            # One limit across both: 6 per minute for this key, counted in Redis.
            for client in (on_a, on_b, on_a, on_b):
                assert client.get("/api/v1/detections", headers=bearer(key)).status_code == 200
            refused = on_a.get("/api/v1/detections", headers=bearer(key))
            assert refused.status_code == 429
            assert 1 <= int(refused.headers["retry-after"]) <= 60
            assert on_b.get("/api/v1/detections", headers=bearer(key)).status_code == 429
            assert on_b.get("/api/v1/keys", headers=ADMIN_HEADERS).status_code == 200

            # A token revoked on B is refused on A within the cache TTL.
            other = on_b.post(
                "/api/v1/keys",
                json={"name": "other", "scopes": ["detections:read"]},
                headers=ADMIN_HEADERS,
            ).json()
            pair = on_b.post("/api/v1/auth/token", json={"api_key": other["key"]}).json()
            access = bearer(pair["access_token"])
            assert on_a.get("/api/v1/detections", headers=access).status_code == 200
            on_b.post("/api/v1/auth/revoke", json={"token": pair["access_token"]})
            _until(
                lambda: on_a.get("/api/v1/detections", headers=access).status_code == 401,
                TTL_S + 0.5,
            )

            # A key revoked on A is refused on B within the cache TTL (a fresh key: the polling
            # above used up the other one's rate limit).
            third = on_b.post(
                "/api/v1/keys",
                json={"name": "third", "scopes": ["detections:read"]},
                headers=ADMIN_HEADERS,
            ).json()
            third_key = bearer(third["key"])
            assert on_b.get("/api/v1/detections", headers=third_key).status_code == 200
            deleted = on_a.delete(f"/api/v1/keys/{third['key_id']}", headers=ADMIN_HEADERS)
            assert deleted.status_code == 204
            _until(
                lambda: on_b.get("/api/v1/detections", headers=third_key).status_code == 401,
                TTL_S + 0.5,
            )
    finally:
        a.stop()
        b.stop()
    assert "Traceback" not in a.output() + b.output()
