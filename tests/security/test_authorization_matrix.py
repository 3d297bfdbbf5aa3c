"""Every route the app serves, crossed with every way to present (or fake) a credential.

Each pair must give its expected status. The cases come from the app's own route table, so a
new route is tested the moment it exists; an app with an undeclared route refuses to start.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from copbridge.api.app import create_app
from copbridge.api.scopes import PUBLIC, required_scope, scope_table, served_routes
from copbridge.config import load_settings
from copbridge.security.keys import SCOPES, format_key
from tests.conftest import ADMIN_HEADERS
from tests.security import helpers as h

_SETTINGS = load_settings(feed="off")
_TABLE = scope_table(_SETTINGS)
_ROUTES = [
    (s.method, s.path, required_scope(_TABLE, s.method, s.path))
    for s in served_routes(create_app(_SETTINGS))
    if s.path not in ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
]
PROTECTED = [(m, p, s) for m, p, s in _ROUTES if s not in (None, PUBLIC)]
PUBLIC_ROUTES = [(m, p) for m, p, s in _ROUTES if s == PUBLIC]


class Fixture:
    def __init__(self, app: FastAPI, client: TestClient) -> None:
        self.app = app
        self.client = client
        self.keys: dict[str, str] = {}  # scope -> a key holding only that scope
        self.lacking: dict[str, str] = {}  # scope -> a key holding every other scope


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fixture]:
    tmp = tmp_path_factory.mktemp("matrix")
    app = create_app(h.secured_settings(tmp))
    with TestClient(app) as client:
        fixture = Fixture(app, client)
        for scope in SCOPES:
            fixture.keys[scope] = h.make_key(app, scope)
            fixture.lacking[scope] = h.make_key(app, *(s for s in SCOPES if s != scope))
        yield fixture


def _token(world: Fixture, key: str) -> str:
    answer = world.client.post("/api/v1/auth/token", json={"api_key": key})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


def _revoked_key(world: Fixture, scope: str) -> str:
    key = h.make_key(world.app, scope)
    key_id = key.split("_")[1]
    assert world.client.delete(f"/api/v1/keys/{key_id}", headers=ADMIN_HEADERS).status_code == 204
    return key


def _revoked_token(world: Fixture, scope: str) -> str:
    token = _token(world, world.keys[scope])
    assert world.client.post("/api/v1/auth/revoke", json={"token": token}).json()["revoked"]
    return token


def _forged(
    make: Callable[[FastAPI, dict[str, object]], str], **changes: object
) -> Callable[[Fixture, str], str]:
    def build(world: Fixture, scope: str) -> str:
        subject = world.keys[scope].split("_")[1]
        return make(world.app, h.claims(world.app, subject, (scope,), **changes))

    return build


_HOUR_AGO = int(time.time()) - 3600
CASES: dict[str, tuple[Callable[[Fixture, str], str | None], int]] = {
    "no credential": (lambda w, s: None, 401),
    "garbage": (lambda w, s: "garbage' OR 1=1 --", 401),
    "key with bad checksum": (
        lambda w, s: w.keys[s][:-1] + ("A" if w.keys[s][-1] != "A" else "B"),
        401,
    ),
    "key with wrong secret": (
        lambda w, s: format_key(w.keys[s].split("_")[1], "W" * 32),
        401,
    ),
    "wrong signature": (_forged(h.foreign_signed), 401),
    "alg none": (_forged(h.alg_none), 401),
    "HS256 signed with the public key": (_forged(h.hs256_with_public_key), 401),
    "expired": (
        _forged(h.server_signed, exp=_HOUR_AGO, iat=_HOUR_AGO - 60, nbf=_HOUR_AGO - 60),
        401,
    ),
    "revoked key": (_revoked_key, 401),
    "revoked token": (_revoked_token, 401),
    "wrong issuer": (_forged(h.server_signed, iss="someone-else"), 401),
    "wrong audience": (_forged(h.server_signed, aud="another-api"), 401),
    "refresh token as access token": (_forged(h.server_signed, token_use="refresh"), 401),
    "missing scope (key)": (lambda w, s: w.lacking[s], 403),
    "missing scope (token)": (lambda w, s: _token(w, w.lacking[s]), 403),
    "valid key": (lambda w, s: w.keys[s], 200),
    "valid token": (lambda w, s: _token(w, w.keys[s]), 200),
}


def _call(client: TestClient, method: str, path: str, credential: str | None) -> httpx.Response:
    url = re.sub(r"\{[^}]+\}", "x", path)
    headers = {} if credential is None else h.bearer(credential)
    if method in ("POST", "PUT", "PATCH"):
        answer: httpx.Response = client.request(method, url, headers=headers, json={})
    else:
        answer = client.request(method, url, headers=headers)
    return answer


def test_the_app_has_protected_routes_to_test() -> None:
    assert len(PROTECTED) >= 10
    assert ("POST", "/api/v1/detections", "detections:write") in PROTECTED


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(("method", "path", "scope"), PROTECTED)
def test_protected_route_answers_by_credential(
    world: Fixture, method: str, path: str, scope: str, case: str
) -> None:
    make, expected = CASES[case]
    answer = _call(world.client, method, path, make(world, scope))
    if expected == 200:
        assert answer.status_code not in (401, 403, 429), answer.text
        assert answer.status_code < 500, answer.text
        return
    assert answer.status_code == expected, answer.text
    if expected == 401:
        assert answer.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "path"), PUBLIC_ROUTES)
def test_public_route_needs_no_credential(world: Fixture, method: str, path: str) -> None:
    for credential in (None, "garbage"):
        answer = _call(world.client, method, path, credential)
        assert answer.status_code not in (401, 403), (path, answer.text)


def test_health_routes_can_require_a_scope(tmp_path: Path) -> None:
    settings = h.secured_settings(tmp_path, metrics_scope="health:read")
    app = create_app(settings)
    with TestClient(app) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/livez").status_code == 200
        other = h.make_key(app, "detections:read")
        assert client.get("/metrics", headers=h.bearer(other)).status_code == 403
        metrics = h.make_key(app, "health:read")
        assert client.get("/metrics", headers=h.bearer(metrics)).status_code == 200
        # the same routes under /api/v1, where the contract lists them, with the same scope
        assert client.get("/api/v1/metrics").status_code == 401
        assert client.get("/api/v1/metrics", headers=h.bearer(metrics)).status_code == 200
        assert client.get("/api/v1/livez").json() == {"status": "ok"}
        assert client.get("/api/v1/readyz").status_code == 200


def test_app_with_an_undeclared_route_refuses_to_start(tmp_path: Path) -> None:
    app = create_app(h.secured_settings(tmp_path))

    @app.get("/api/v1/forgotten")
    async def forgotten() -> dict[str, str]:
        return {"secret": "data"}

    with pytest.raises(RuntimeError, match=r"GET /api/v1/forgotten"), TestClient(app):
        pass


def test_app_with_a_plain_starlette_route_refuses_to_start(tmp_path: Path) -> None:
    from starlette.responses import PlainTextResponse

    app = create_app(h.secured_settings(tmp_path))
    app.add_route("/sneaky", lambda request: PlainTextResponse("hi"))
    with pytest.raises(RuntimeError, match="/sneaky"), TestClient(app):
        pass


def test_a_router_included_later_is_guarded_without_edits_to_it(tmp_path: Path) -> None:
    from fastapi import APIRouter

    router = APIRouter(prefix="/api/v1/destinations")

    @router.get("")
    async def destinations() -> list[str]:
        return []

    app = create_app(h.secured_settings(tmp_path))
    app.include_router(router)
    with TestClient(app) as client:
        assert client.get("/api/v1/destinations").status_code == 401
        reader = h.make_key(app, "destinations:read")
        assert client.get("/api/v1/destinations", headers=h.bearer(reader)).status_code == 200


def test_every_declared_scope_is_a_known_scope() -> None:
    assert {s for s in _TABLE.values() if s != PUBLIC} <= set(SCOPES)
