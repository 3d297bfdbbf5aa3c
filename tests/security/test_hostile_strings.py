"""Hostile strings (SQL, markup, paths, format strings, null bytes, huge numbers) in every text
field of a detection are data: stored and returned verbatim, never executed or interpreted, and
the CoT event stays valid against the MITRE schemas. Run on every store adapter."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from lxml import etree

from copbridge.api.app import create_app
from copbridge.cot.text import clean_text
from tests.api.conftest import example
from tests.conftest import ADMIN_HEADERS
from tests.cot.schemas import CotSchemas
from tests.security.helpers import secured_settings

HOSTILE = [
    "'; DROP TABLE detections; --",
    '" OR 1=1 --',
    "<script>alert(1)</script>",
    "]]><evil xmlns='urn:x'/><![CDATA[",
    "<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]>&e;",
    "../../../../etc/passwd",
    "..\\..\\windows\\system32\\config",
    "%s%s%s%n %x {0} {__class__} ${jndi:ldap://x/a} {{7*7}}",
    "nul\x00byte\x01\x1f",
    "9" * 64,
    "1e999999",
    "-0x7fffffffffffffff",
    "\u202eevil\u202c",
    "\r\nX-Injected: 1",
    "\x1b[31mred",
    "🛰️ ✈️ 🚁",
]
NUL = 8  # index of the string with a NUL byte: refused (422) on every store, see below
TEXT_FIELDS = ("label", "sensor.callsign", "sensor.model")
PATTERN_FIELDS = ("id", "sensor.id", "track_id")
_SCHEMAS = CotSchemas()


@pytest.fixture
def client(tmp_path: Path, store_url: str) -> Iterator[TestClient]:
    app = create_app(secured_settings(tmp_path, url=store_url, destinations="file:///dev/null"))
    with TestClient(app, headers=ADMIN_HEADERS) as test_client:
        yield test_client


def _set(body: dict[str, Any], field: str, value: object) -> dict[str, Any]:
    target = body
    *parents, last = field.split(".")
    for name in parents:
        target = target[name]
    target[last] = value
    return body


def _get(body: dict[str, Any], field: str) -> object:
    value: Any = body
    for name in field.split("."):
        value = value[name]
    return value


def _post(client: TestClient, body: dict[str, Any]) -> Any:
    # Encoded by hand: a lone surrogate must reach the server as the JSON escape "\ud800".
    raw = json.dumps(body, ensure_ascii=True).encode()
    return client.post(
        "/api/v1/detections", content=raw, headers={"content-type": "application/json"}
    )


@pytest.mark.parametrize("index", [i for i in range(len(HOSTILE)) if i != NUL])
def test_hostile_text_is_kept_verbatim_and_the_cot_stays_valid(
    client: TestClient, index: int
) -> None:
    text = HOSTILE[index]
    body = example(id=f"hostile-{index}")
    for field in TEXT_FIELDS:
        _set(body, field, text[:64])
    answer = _post(client, body)
    assert answer.status_code == 202, answer.text
    stored = client.get(f"/api/v1/detections/hostile-{index}").json()["detection"]
    for field in TEXT_FIELDS:
        assert _get(stored, field) == text[:64], field
    # Filters are bound parameters: the hostile label finds exactly its own detection.
    found = client.get("/api/v1/detections", params={"label": text[:64]}).json()["items"]
    assert [d["id"] for d in found] == [f"hostile-{index}"]
    cot = client.get(f"/api/v1/detections/hostile-{index}/cot").content
    _SCHEMAS.assert_valid(cot)
    root = etree.fromstring(cot, etree.XMLParser(resolve_entities=False, no_network=True))
    tags = {str(e.tag) for e in root.iter()}
    assert not {t for t in tags if "script" in t or "evil" in t}, tags
    texts = [t for e in root.iter() for t in (e.text, e.tail) if t]
    attributes = [str(v) for e in root.iter() for v in e.attrib.values()]
    everything = " ".join(texts + attributes)
    visible = clean_text(text[:64]).replace("\r\n", "\n").replace("\r", "\n")
    assert visible.strip() in everything.replace("\r\n", "\n"), visible


def test_nul_in_free_text_is_refused_naming_each_field_on_every_store(
    client: TestClient,
) -> None:
    # PostgreSQL text cannot hold NUL and XML cannot carry it: one clear 422 everywhere instead
    # of text one store keeps and another cannot (it answered 503 "retry" on PostgreSQL).
    body = example(id="nul")
    for field in TEXT_FIELDS:
        _set(body, field, HOSTILE[NUL])
    answer = _post(client, body)
    assert answer.status_code == 422
    assert {e["field"] for e in answer.json()["errors"]} == set(TEXT_FIELDS)
    assert "NUL" in answer.json()["detail"]
    assert client.get("/api/v1/detections", params={"label": "a\x00b"}).status_code == 422
    assert client.get("/api/v1/detections").json()["items"] == []


def test_nul_in_a_key_name_is_refused_on_every_store(client: TestClient) -> None:
    # PostgreSQL answered 503 "retry later" for it: a client would retry bad input forever
    answer = client.post("/api/v1/keys", json={"name": "a\x00b", "scopes": ["audit:read"]})
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"][0]["field"] == "name"
    assert "NUL" in answer.json()["detail"]


def test_lone_surrogates_are_not_text_and_are_refused_naming_the_fields(
    client: TestClient,
) -> None:
    body = example(id="surrogate", label="\ud800 lone")
    _set(body, "sensor.callsign", "\udfff")
    answer = _post(client, body)
    assert answer.status_code == 422
    assert {e["field"] for e in answer.json()["errors"]} == {"label", "sensor.callsign"}


@pytest.mark.parametrize("field", PATTERN_FIELDS)
@pytest.mark.parametrize("index", [0, 2, 5, 8])
def test_hostile_text_in_identifier_fields_is_refused_naming_the_field(
    client: TestClient, field: str, index: int
) -> None:
    answer = _post(client, _set(example(id=f"pattern-{index}"), field, HOSTILE[index]))
    assert answer.status_code == 422
    assert field in answer.json()["errors"][0]["field"]
    assert client.get("/api/v1/detections").json()["items"] == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("confidence", 10**400),
        ("confidence", -1e308),
        ("bbox.x", 10**30),
        ("camera.width", 2**63),
        ("platform.lat", 1e308),
        ("platform.alt", -(10**50)),
        ("camera.hfov", 1e-320),
    ],
)
def test_huge_numbers_are_422_not_a_crash(client: TestClient, field: str, value: object) -> None:
    answer = _post(client, _set(example(id="huge"), field, value))
    assert answer.status_code == 422, answer.text


@pytest.mark.parametrize("path", ["..%2F..%2Fetc%2Fpasswd", "%00", "x%27%20OR%201%3D1", "%3Cb%3E"])
def test_hostile_ids_in_paths_are_just_unknown(client: TestClient, path: str) -> None:
    for suffix in ("", "/cot", "/image"):
        answer = client.get(f"/api/v1/detections/{path}{suffix}")
        assert answer.status_code in (404, 422), answer.text
