"""Shared pieces of the security suite: an app with a known admin key, keys with chosen scopes,
and tokens forged every way an attacker might try."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI

from copbridge.api.auth import Guard
from copbridge.config import Settings, load_settings
from copbridge.security.keys import mint_key, new_key_record, now_us
from tests.conftest import ADMIN_KEY


def secured_settings(tmp_path: Path, url: str | None = None, **overrides: Any) -> Settings:
    """Settings of an app whose admin key is ``ADMIN_KEY``, with limits loose enough for suites."""
    values: dict[str, Any] = {
        "database_url": url or f"sqlite:///{tmp_path / 'sec.db'}",
        "data_dir": tmp_path / "data",
        "feed": "off",
        "run_worker": False,
        "bootstrap_key": ADMIN_KEY,
        "rate_limit_ip": "100000/second",
        "rate_limit_credential": "100000/second",
        "rate_limit_auth": "100000/minute",
        "rate_limit_prefix": f"t{uuid.uuid4().hex[:12]}",
        "prepare_process": False,  # a second of start-up per app; its own tests cover it
    }
    values.update(overrides)
    return load_settings(**values)


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def guard_of(app: FastAPI) -> Guard:
    guard: Guard = app.state.guard
    return guard


def make_key(app: FastAPI, *scopes: str, name: str = "test") -> str:
    """A key with exactly ``scopes``, created straight in the app's store."""
    guard = guard_of(app)
    key, text = mint_key()
    guard.store.create_key(new_key_record(key, guard.keyring.pepper, name, scopes, now_us()), "t")
    return text


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(app: FastAPI, subject: str, scopes: tuple[str, ...], **changes: Any) -> dict[str, Any]:
    settings: Settings = app.state.settings
    now = int(time.time())
    out: dict[str, Any] = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": subject,
        "scope": " ".join(scopes),
        "jti": uuid.uuid4().hex,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "token_use": "access",
    }
    out.update(changes)
    return out


def server_signed(app: FastAPI, payload: dict[str, Any]) -> str:
    """Signed with the server's real key: valid unless the claims say otherwise."""
    key = guard_of(app).signing.current()
    assert key.private is not None
    return jwt.encode(payload, key.private, algorithm="RS256", headers={"kid": key.kid})


def foreign_signed(app: FastAPI, payload: dict[str, Any]) -> str:
    """Signed by an attacker's RSA key that claims the server's ``kid``."""
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = guard_of(app).signing.current().kid
    return jwt.encode(payload, other, algorithm="RS256", headers={"kid": kid})


def alg_none(app: FastAPI, payload: dict[str, Any]) -> str:
    kid = guard_of(app).signing.current().kid
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
    return f"{header}.{_b64(json.dumps(payload).encode())}."


def hs256_with_public_key(app: FastAPI, payload: dict[str, Any]) -> str:
    """The classic confusion attack: HMAC keyed with the server's public key PEM."""
    public = guard_of(app).signing.current().public
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    kid = guard_of(app).signing.current().kid
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = _b64(json.dumps(payload).encode())
    signature = hmac.new(pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(signature)}"
