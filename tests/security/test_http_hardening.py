"""Hardening headers on every answer, CORS closed unless configured, body limits before auth,
and HTTPS with HSTS from ``serve`` when a certificate is configured."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from copbridge.api.app import create_app
from tests.conftest import ADMIN_HEADERS, ADMIN_KEY
from tests.security.helpers import secured_settings
from tests.system.processes import COPBRIDGE, free_port
from tests.tls import self_signed


def test_every_answer_carries_the_hardening_headers(tmp_path: Path) -> None:
    with TestClient(create_app(secured_settings(tmp_path))) as client:
        for answer in (
            client.get("/livez"),
            client.get("/api/v1/keys"),  # a refusal too
            client.get("/api/v1/keys", headers=ADMIN_HEADERS),
        ):
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert answer.headers["x-frame-options"] == "DENY"
            assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
            assert answer.headers["referrer-policy"] == "no-referrer"
            assert "strict-transport-security" not in answer.headers  # plain HTTP here
        assert client.get("/api/v1/keys", headers=ADMIN_HEADERS).headers["cache-control"] == (
            "no-store"
        )


def test_cors_is_closed_unless_origins_are_configured(tmp_path: Path) -> None:
    preflight = {
        "Origin": "https://evil.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    with TestClient(create_app(secured_settings(tmp_path / "a"))) as client:
        answer = client.options("/api/v1/detections", headers=preflight)
        assert "access-control-allow-origin" not in answer.headers
        simple = client.get("/livez", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in simple.headers
    settings = secured_settings(tmp_path / "b", cors_origins="https://ops.example")
    with TestClient(create_app(settings)) as client:
        allowed = client.options(
            "/api/v1/detections", headers={**preflight, "Origin": "https://ops.example"}
        )
        assert allowed.headers["access-control-allow-origin"] == "https://ops.example"
        refused = client.options("/api/v1/detections", headers=preflight)
        assert "access-control-allow-origin" not in refused.headers


def test_oversized_body_is_413_before_it_is_read_or_authenticated(tmp_path: Path) -> None:
    with TestClient(create_app(secured_settings(tmp_path, max_body_bytes=2048))) as client:
        answer = client.post(
            "/api/v1/detections",
            content=b"x" * 4096,
            headers={"content-type": "application/json"},
        )
        assert answer.status_code == 413


def test_serve_terminates_tls_and_sends_hsts(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    port = free_port()
    env = {
        **os.environ,
        "COPBRIDGE_HOST": "127.0.0.1",
        "COPBRIDGE_PORT": str(port),
        "COPBRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'tls.db'}",
        "COPBRIDGE_DATA_DIR": str(tmp_path / "data"),
        "COPBRIDGE_FEED": "off",
        "COPBRIDGE_RUN_WORKER": "false",
        "COPBRIDGE_BOOTSTRAP_KEY": ADMIN_KEY,
        "COPBRIDGE_TLS_CERT": str(cert),
        "COPBRIDGE_TLS_KEY": str(key),
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*COPBRIDGE, "serve"], env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT
        )
    context = ssl.create_default_context(cafile=str(cert))
    try:
        deadline = time.monotonic() + 20
        answer = None
        while answer is None and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                answer = httpx.get(f"https://127.0.0.1:{port}/livez", verify=context, timeout=1)
            except httpx.HTTPError:
                time.sleep(0.1)
        assert answer is not None, log.read_text()
        assert answer.status_code == 200
        assert answer.headers["strict-transport-security"].startswith("max-age=")
        with pytest.raises(httpx.HTTPError):  # plain HTTP is not served on the TLS port
            httpx.get(f"http://127.0.0.1:{port}/livez", timeout=2).raise_for_status()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
