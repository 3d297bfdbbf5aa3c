"""Keys and tokens never appear in plaintext in the database file, the logs or the audit trail:
a real ``serve`` process is driven through every credential path, then everything is searched."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx

from copbridge.security.keys import parse_key
from copbridge.store import open_store
from tests.conftest import ADMIN_HEADERS, ADMIN_KEY
from tests.security.helpers import bearer
from tests.system.processes import COPBRIDGE, start_serve


def _needles(secret: str) -> list[str]:
    """The whole credential and the parts that would be enough to rebuild or replay it."""
    parsed = parse_key(secret)
    if parsed is not None:
        return [secret, parsed.secret]
    return [secret, secret.rsplit(".", 1)[-1]]  # a JWT, and its signature alone


def test_no_key_or_token_is_stored_logged_or_audited_in_plaintext(tmp_path: Path) -> None:
    serve = start_serve(
        tmp_path, env={"COPBRIDGE_LOG_LEVEL": "debug", "COPBRIDGE_RUN_WORKER": "false"}
    )
    secrets = [ADMIN_KEY]
    try:
        with httpx.Client(base_url=serve.url, timeout=10) as http:
            made = http.post(
                "/api/v1/keys",
                json={"name": "leak-check", "scopes": ["detections:read", "audit:read"]},
                headers=ADMIN_HEADERS,
            )
            key = made.json()["key"]
            secrets.append(key)
            assert http.get("/api/v1/detections", headers={"X-API-Key": key}).status_code == 200
            first = http.post("/api/v1/auth/token", json={"api_key": key}).json()
            second = http.post(
                "/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}
            ).json()
            secrets += [first["access_token"], first["refresh_token"]]
            secrets += [second["access_token"], second["refresh_token"]]
            assert http.get("/api/v1/audit", headers=bearer(second["access_token"])).is_success
            reuse = http.post(
                "/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}
            )
            assert reuse.status_code == 401
            http.post("/api/v1/auth/revoke", json={"token": second["access_token"]})
            parsed = parse_key(key)
            assert parsed is not None
            wrong = key.replace(parsed.secret, parsed.secret[::-1])
            assert http.get("/api/v1/detections", headers=bearer(wrong)).status_code == 401
            secrets.append(wrong)
            assert http.post("/api/v1/auth/token", json={"api_key": wrong}).status_code == 401
    finally:
        serve.stop()
    env = {**os.environ, **serve.client_env()}
    env["COPBRIDGE_DATABASE_URL"] = f"sqlite:///{tmp_path / 'copbridge.db'}"
    env["COPBRIDGE_DATA_DIR"] = str(tmp_path / "data")
    cli = subprocess.run(
        [*COPBRIDGE, "keys", "create", "--name", "cli"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    secrets.append(cli.stdout.strip())

    logs = serve.output()
    assert '"route": "/api/v1/auth/refresh"' in logs or "/api/v1/auth/refresh" in logs
    database = b"".join(p.read_bytes() for p in tmp_path.glob("copbridge.db*"))
    store = open_store(f"sqlite:///{tmp_path / 'copbridge.db'}")
    try:
        audit = json.dumps(
            [r.data | {"s": r.subject, "a": r.actor} for r in store.audit_records(0, 10_000)]
        )
        kinds = {r.kind for r in store.audit_records(0, 10_000)}
    finally:
        store.close()
    assert {"key.created", "token.issued", "token.refreshed", "auth.failed"} <= kinds
    assert "token.family_revoked" in kinds
    for secret in secrets:
        for needle in _needles(secret):
            assert needle.encode() not in database, f"{needle[:12]}… is in the database file"
            assert needle not in logs, f"{needle[:12]}… is in the logs"
            assert needle not in audit, f"{needle[:12]}… is in the audit trail"
