"""What the fuzzer found, pinned: each case failed (500, undocumented 400, or a 422 body unlike
its documented schema) before its fix at the root."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from copbridge.api.app import create_app
from tests.api.conftest import app_settings, example
from tests.conftest import ADMIN_HEADERS

# Found by schemathesis: a subnormal focal length overflowed 1/f to infinity deep in the
# geometry (ValueError: cannot convert float NaN to integer → 500).
SUBNORMAL_FX: dict[str, Any] = {
    "bbox": {"height": 5e-324, "width": 5e-324, "x": 0.0, "y": 0.0},
    "camera": {"fx": 5e-324, "height": 1, "width": 1},
}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(app_settings(tmp_path)), headers=ADMIN_HEADERS) as test_client:
        yield test_client


@pytest.mark.parametrize(
    "camera",
    [
        {"fx": 5e-324, "width": 1, "height": 1},
        {"fx": 1e-300, "width": 1920, "height": 1080},
        {"hfov": 1e-320, "width": 1920, "height": 1080},
        {"hfov": 60.0, "vfov": 1e-320, "width": 1920, "height": 1080},
        {"fx": 1000.0, "fy": 5e-324, "width": 1920, "height": 1080},
    ],
)
def test_focal_lengths_the_geometry_cannot_hold_are_422_naming_the_camera(
    client: TestClient, camera: dict[str, Any]
) -> None:
    body = example(id="subnormal", camera=camera, bbox={"x": 0, "y": 0, "width": 1, "height": 1})
    answer = client.post("/api/v1/detections", json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"][0]["field"] == "camera"


def test_the_fuzzers_subnormal_detection_is_422_alone_and_in_a_batch(client: TestClient) -> None:
    body = example(id="fuzz-1", **SUBNORMAL_FX)
    assert client.post("/api/v1/detections", json=body).status_code == 422
    batch = client.post("/api/v1/detections/batch", json={"detections": [body]})
    assert batch.status_code == 207, batch.text
    assert batch.json()["results"][0]["status"] == 422


def test_ordinary_focal_lengths_still_pass(client: TestClient) -> None:
    camera = {"fx": 1662.8, "fy": 1662.8, "width": 1920, "height": 1080}
    assert client.post("/api/v1/detections", json=example(camera=camera)).status_code == 202
    narrow = {"hfov": 0.5, "width": 1920, "height": 1080}  # a long telephoto
    assert client.post(
        "/api/v1/detections", json=example(id="tele", camera=narrow)
    ).status_code in (
        202,
        422,  # may miss the ground, but never a 500
    )


def test_undecodable_body_is_422_naming_the_body_not_400(client: TestClient) -> None:
    answer = client.post(
        "/api/v1/keys", content=b"\xff", headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"] == [
        {"field": "body", "message": "body: There was an error parsing the body"}
    ]


def test_malformed_multipart_is_422_not_400(client: TestClient) -> None:
    boundary = "c27f048cbed1992a19fccc6874d033c9"
    parts = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nnull\r\n'.encode()
        for i in range(4)
    )
    answer = client.post(
        "/api/v1/detections",
        content=parts + f"--{boundary}--\r\n".encode(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"][0]["field"] == "body"


def test_documented_422_schema_is_the_shape_sent(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    documented = schemas["HTTPValidationError"]
    assert documented["properties"]["detail"] == {"type": "string"}
    assert documented["required"] == ["detail", "errors"]
    sent = client.get("/api/v1/audit", params={"limit": 0})
    assert sent.status_code == 422
    assert set(sent.json()) == {"detail", "errors"}
    assert isinstance(sent.json()["detail"], str)
    assert set(sent.json()["errors"][0]) == set(schemas["ValidationError"]["required"])


def test_an_hfov_that_underflows_to_zero_radians_is_422_not_500(client: TestClient) -> None:
    camera = {"hfov": 5e-324, "width": 1, "height": 1}
    body = example(id="underflow", camera=camera, bbox={"x": 0, "y": 0, "width": 1, "height": 1})
    answer = client.post("/api/v1/detections", json=body)
    assert answer.status_code == 422, answer.text


@pytest.mark.parametrize("cursor", ["110262690700206719178959001", "9223372036854775808"])
def test_a_cursor_beyond_64_bits_is_422_not_500(client: TestClient, cursor: str) -> None:
    answer = client.get("/api/v1/detections", params={"cursor": cursor})
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"][0]["field"] == "query.cursor"


def test_the_largest_cursor_still_reads(client: TestClient) -> None:
    answer = client.get("/api/v1/detections", params={"cursor": "9" * 18})
    assert answer.status_code == 200, answer.text
    assert answer.json()["items"] == []
