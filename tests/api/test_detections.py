"""The contract's examples as tests: answers, field-named errors, limits, idempotency, images."""

from __future__ import annotations

import base64
import copy
import gzip
import hashlib
import io
import json
import math
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from lxml import etree
from PIL import Image

from copbridge.api.app import create_app
from copbridge.cot import parse_xml
from copbridge.store import ImageBlob, StoreUnavailable
from tests.api.conftest import DESTINATIONS, EXAMPLE, app_settings, example, taken_now
from tests.conftest import ADMIN_HEADERS

URL = "/api/v1/detections"


def _jpeg(width: int = 64, height: int = 48) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, "JPEG")
    return out.getvalue()


def test_contract_example_is_accepted_with_a_location(client: TestClient) -> None:
    answer = client.post(URL, json=EXAMPLE)
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["id"] == "uav7-f000123-d3"
    assert body["uid"] == "copbridge.uav-7.17"
    assert body["status"] == "queued"
    assert body["cot_type"] == "a-u-G"
    assert body["duplicate"] is False
    assert body["stale"] == "2026-11-28T03:56:20.123Z"
    location = body["location"]
    assert location["ground"] == "request"
    assert location["point"] == "bbox-bottom-centre"
    # A person low in the left of a frame looking west-south-west from 2.9 km MSL.
    assert 41.13 < location["lat"] < 41.15
    assert -104.80 < location["lon"] < -104.77
    assert location["ce90"] > 0
    assert location["le90"] > 0
    assert 1000 < location["slant_range"] < 5000


def test_stored_detection_reads_back_with_its_cot(client: TestClient) -> None:
    client.post(URL, json=EXAMPLE)
    stored = client.get(f"{URL}/uav7-f000123-d3").json()
    assert stored["detection"]["sensor"]["callsign"] == "RAVEN 7"
    assert stored["answer"]["uid"] == "copbridge.uav-7.17"
    cot = client.get(f"{URL}/uav7-f000123-d3/cot")
    assert cot.headers["content-type"].startswith("application/xml")
    event = parse_xml(cot.content)
    assert event.uid == "copbridge.uav-7.17"
    assert event.how == "m-i"
    assert client.get(f"{URL}/nope").status_code == 404


def test_every_refused_batch_item_has_one_error_shape_naming_its_field(
    client: TestClient,
) -> None:
    """A contract error, a geometry and a time refusal, a bad image and a reused id: each is
    what a refused single detection's body is (``detail`` and ``errors``), its field named
    within the batch. Before, they came in three shapes, the last two without a field."""
    client.post(URL, json=example(id="used"))
    sky = {"azimuth": 266.4, "elevation": 12.0, "roll": 0.0}
    items = [
        example(id="fine"),
        example(id="bad", confidence=2),
        example(id="sky", gimbal=sky),
        example(id="late", time="2099-01-01T00:00:00Z"),
        example(id="used", label="dog"),
        example(id="img", image={"data": "aGVsbG8=", "media_type": "image/jpeg"}),
    ]
    results = client.post(f"{URL}/batch", json=items).json()["results"]
    assert [r["status"] for r in results] == [202, 422, 422, 422, 409, 422]
    named = ["confidence", "geometry", "time", "id", "image"]
    for index, (result, field) in enumerate(zip(results[1:], named, strict=True), start=1):
        error = result["error"]
        first = error["errors"][0]
        assert first["field"] == f"detections[{index}].{field}", error
        assert first["message"].startswith(f"detections[{index}].{field}: "), error
        assert error["detail"].startswith(first["message"]), error


def test_a_stored_detection_keeps_its_time_in_utc(client: TestClient) -> None:
    """The contract stores times in UTC: an offset or lower-case letters are not kept as sent,
    in single posts and in batches alike."""
    sent = {
        "tz-1": "2026-11-28T12:51:20.123+09:00",
        "tz-2": "2026-11-28t03:51:20z",
        "tz-3": "2026-11-28T03:51:20.123456Z",
    }
    client.post(URL, json=example(id="tz-1", time=sent["tz-1"]))
    client.post(
        f"{URL}/batch", json=[example(id=i, time=t) for i, t in sent.items() if i != "tz-1"]
    )
    stored = {i: client.get(f"{URL}/{i}").json()["detection"]["time"] for i in sent}
    assert stored == {
        "tz-1": "2026-11-28T03:51:20.123Z",
        "tz-2": "2026-11-28T03:51:20Z",
        "tz-3": "2026-11-28T03:51:20.123456Z",
    }


def test_same_id_same_body_returns_first_answer_as_duplicate(client: TestClient) -> None:
    first = client.post(URL, json=EXAMPLE).json()
    again = client.post(URL, json=EXAMPLE)
    assert again.status_code == 202
    assert again.json() == {**first, "duplicate": True}


def _respelt(body: dict[str, Any]) -> dict[str, Any]:
    """The same detection as another JSON library or a tidier client would write it."""
    again = copy.deepcopy(body)
    again["camera"]["width"] = 1920.0  # an integer written as a float
    again["gimbal"]["roll"] = 0  # a float written as an integer
    again["time"] = again["time"].replace("Z", "+00:00")  # the same instant
    again["affiliation"] = "unknown"  # the default, spelt out
    again["camera"]["vfov"] = None  # an optional field, given as null
    again["track_id"] = int(again["track_id"])  # a numeric track id as a number
    return dict(reversed(list(again.items())))  # keys in another order


def test_a_retry_spelt_differently_is_a_duplicate_not_a_conflict(client: TestClient) -> None:
    # a 409 tells the client its detection clashed: it may give it up
    body = example()
    body.pop("affiliation", None)
    body["camera"].pop("vfov", None)
    body["gimbal"]["roll"] = 0.0
    first = client.post(URL, json=body).json()
    again = client.post(URL, json=_respelt(body))
    assert again.status_code == 202, again.text
    assert again.json() == {**first, "duplicate": True}
    batch = client.post(f"{URL}/batch", json=[_respelt(body)]).json()
    assert batch["duplicates"] == 1
    moved = _respelt(body)
    moved["bbox"]["x"] += 1
    assert client.post(URL, json=moved).status_code == 409


@pytest.mark.parametrize(
    "respell",
    [
        lambda b: b.update(uncertainty={}),
        lambda b: b.update(uncertainty={"horizontal_m": None}),
        lambda b: b["camera"].update(distortion={"k1": 0.0, "k2": 0}),
    ],
    ids=["empty uncertainty", "null uncertainty member", "zero distortion"],
)
def test_defaults_spelt_out_in_an_object_are_a_duplicate_not_a_conflict(
    client: TestClient, respell: Any
) -> None:
    body = example()
    del body["uncertainty"]
    del body["camera"]["distortion"]
    first = client.post(URL, json=body).json()
    again = copy.deepcopy(body)
    respell(again)
    answer = client.post(URL, json=again)
    assert answer.status_code == 202, answer.text
    assert answer.json() == {**first, "duplicate": True}


def test_a_detection_stored_with_an_earlier_hash_is_still_its_retrys_duplicate(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Versions before 12-03 hashed an all-zero distortion apart from none (the contract's
    # example spells one out): their stored detections must stay duplicates of their retries.
    from copbridge import pipeline
    from copbridge.model import Detection

    body = example()
    new, earlier = pipeline.body_hashes(Detection.model_validate(body), None)
    assert earlier
    assert new not in earlier
    with monkeypatch.context() as old_version:
        old_version.setattr(pipeline, "body_hashes", lambda d, i: (earlier[0], ()))
        first = client.post(URL, json=body).json()
    store = client.app.state.store  # type: ignore[attr-defined]
    sql = "SELECT body_hash FROM detections WHERE id = ?"
    assert store._read(lambda tx: tx.one(sql, (body["id"],)))[0] == earlier[0]
    answer = client.post(URL, json=body)
    assert answer.status_code == 202, answer.text
    assert answer.json() == {**first, "duplicate": True}


def test_reused_id_with_other_body_is_409(client: TestClient) -> None:
    client.post(URL, json=EXAMPLE)
    answer = client.post(URL, json=example(confidence=0.5))
    assert answer.status_code == 409
    assert "uav7-f000123-d3" in answer.json()["detail"]


def test_server_makes_an_id_when_none_is_given(client: TestClient) -> None:
    body = example()
    del body["id"]
    first = client.post(URL, json=body).json()
    second = client.post(URL, json=body).json()
    assert first["id"] != second["id"]
    assert len(first["id"]) == 36  # UUIDv7 text


def _with(path: str, value: Any) -> dict[str, Any]:
    body = example()
    target = body
    *parents, leaf = path.split(".")
    for key in parents:
        target = target[key]
    if value is _DELETE:
        del target[leaf]
    else:
        target[leaf] = value
    return body


_DELETE = object()

FIELD_CASES = [
    ("id", "bad id!"),
    ("id", "x" * 129),
    ("time", "2026-11-28T03:51:20"),  # no offset
    ("time", "yesterday"),
    ("time", _DELETE),
    ("time", "2026"),  # pydantic alone would read these as Unix seconds
    ("time", "20261128"),
    ("time", 1700000000),
    ("time", "9999-12-31T23:59:59Z"),  # its stale time would overflow (was a 500)
    ("time", "0001-01-01T00:00:00+14:00"),  # before year 1 in UTC (was a 500)
    ("time", "1969-12-31T23:59:59Z"),
    ("sensor.id", "uav 7"),
    ("sensor.callsign", "c" * 65),
    ("sensor.model", "m" * 129),
    ("label", ""),
    ("label", "l" * 65),
    ("confidence", 1.5),
    ("confidence", -0.1),
    ("confidence", "high"),
    ("confidence", "0.5"),  # a number, not a string holding one
    ("confidence", True),
    ("camera.hfov", "60"),
    ("bbox.width", 0),
    ("bbox.x", -1),
    ("track_id", "track 17"),
    ("affiliation", "enemy"),
    ("camera.width", 0),
    ("camera.width", "1920"),  # a lax int took text and booleans (true was a 1 px image)
    ("camera.width", "1_920"),
    ("camera.height", True),
    ("camera.hfov", 180),
    ("camera.fx", -5),
    ("camera.distortion.k1", 1000),
    ("platform.lat", 91),
    ("platform.lon", -181),
    ("platform.alt_ref", "agl2"),
    ("platform.pitch", 95),
    ("gimbal.azimuth", 400),
    ("ground.height_ref", "wgs84"),
    ("uncertainty.attitude_deg", -1),
    ("platform.speed", 3),  # unknown field
]


@pytest.mark.parametrize(
    ("field", "value"), FIELD_CASES, ids=[f"{f}={v!r}"[:40] for f, v in FIELD_CASES]
)
def test_each_invalid_field_is_422_naming_it(client: TestClient, field: str, value: Any) -> None:
    answer = client.post(URL, json=_with(field, value))
    assert answer.status_code == 422, answer.text
    fields = [e["field"] for e in answer.json()["errors"]]
    assert field in fields, fields
    assert field in answer.json()["detail"]


@pytest.mark.parametrize(
    ("field", "limit"), [("label", 64), ("sensor.callsign", 64), ("sensor.model", 128)]
)
def test_a_text_too_long_is_named_in_characters(client: TestClient, field: str, limit: int) -> None:
    # It read "Value should have at most 64 items after validation, not 65".
    answer = client.post(URL, json=_with(field, "x" * (limit + 1)))
    assert answer.status_code == 422, answer.text
    assert f"{field}: String should have at most {limit} characters" in answer.json()["detail"]


@pytest.mark.parametrize("field", ["platform.heading", "platform.pitch", "platform.roll"])
def test_platform_attitude_left_out_is_422_not_zero(client: TestClient, field: str) -> None:
    # Left out, each read as 0°: the example's point moved 4 km with its heading missing.
    body = example()
    del body["platform"][field.split(".")[1]]
    answer = client.post(URL, json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"][0]["field"] == field


@pytest.mark.parametrize("field", ["gimbal", "gimbal.roll", "platform.alt_ref", "affiliation"])
def test_null_for_a_field_with_a_default_is_422_saying_to_leave_it_out(
    client: TestClient, field: str
) -> None:
    # A detector that lost its gimbal reading must not have it taken as 0 degrees.
    answer = client.post(URL, json=_with(field, None))
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"][0]["field"] == field
    assert "not null (leave an optional field out" in answer.json()["detail"]


@pytest.mark.parametrize(
    ("url", "raw", "field"),
    [
        (f"{URL}/batch", b'{"detections": [], "\\ud800": 1}', "\ud800"),
        ("/api/v1/keys", b'{"name": "k", "scopes": ["\\ud800"]}', "scopes"),
    ],
)
def test_a_lone_surrogate_echoed_in_an_error_is_a_422_not_a_500(
    client: TestClient, url: str, raw: bytes, field: str
) -> None:
    answer = client.post(url, content=raw, headers={"Content-Type": "application/json"})
    assert answer.status_code == 422, answer.text
    assert b"\\ud800" in answer.content  # escaped: the text is not Unicode
    assert answer.json()["errors"][0]["field"] == field


def test_camera_without_hfov_or_fx_is_422(client: TestClient) -> None:
    body = example()
    body["camera"] = {"width": 1920, "height": 1080}
    answer = client.post(URL, json=body)
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["field"] == "camera"
    assert "hfov or fx" in answer.json()["detail"]


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_422(client: TestClient, token: str) -> None:
    raw = json.dumps(EXAMPLE).replace('"confidence": 0.91', f'"confidence": {token}')
    answer = client.post(URL, content=raw, headers={"content-type": "application/json"})
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["field"] == "confidence"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"id": ',
        b"[" * 1000 + b"]" * 1000,  # deeper than any parser here recurses (was a 500)
        b'{"label": ' + b"9" * 5000 + b"}",  # past Python's int digit limit (was a 500)
        b'{"label": ' + b"[" * 1000 + b"]" * 1000 + b"}",
    ],
    ids=["cut", "deep", "long-int", "deep-field"],
)
def test_malformed_json_is_422_naming_the_body(client: TestClient, raw: bytes) -> None:
    for url in (URL, f"{URL}/batch"):
        answer = client.post(url, content=raw, headers={"content-type": "application/json"})
        assert answer.status_code == 422, answer.text
        assert answer.json()["errors"][0]["field"] == "body"
        assert answer.json()["errors"][0]["message"].startswith("body: ")
        # The reason is for the client: no advice to call Python functions.
        assert "sys." not in answer.json()["detail"]


def test_box_outside_the_image_is_422(client: TestClient) -> None:
    answer = client.post(URL, json=example(bbox={"x": 1900, "y": 10, "width": 40, "height": 40}))
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["field"] == "bbox"
    assert "inside the 1920x1080 image" in answer.json()["detail"]


def test_camera_pointing_above_the_horizon_is_422_naming_the_angle(client: TestClient) -> None:
    body = example(gimbal={"azimuth": 266.4, "elevation": 12.0, "roll": 0.0})
    answer = client.post(URL, json=body)
    assert answer.status_code == 422
    assert "above the horizon" in answer.json()["detail"]
    assert "°" in answer.json()["detail"]
    assert client.get(f"{URL}/{EXAMPLE['id']}").status_code == 404


def test_oversized_body_is_413_before_parsing_and_audited_as_rejected(tmp_path: Path) -> None:
    settings = app_settings(tmp_path, max_body_bytes=4096)
    big = example(label="x", sensor={"id": "a", "model": "m" * 8000})
    line = 'copbridge_detections_rejected_total{reason="too_large"} '

    def too_large(text: str) -> float:
        return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(line))

    with TestClient(create_app(settings), headers=ADMIN_HEADERS) as client:
        before = too_large(client.get("/metrics").text)
        answer = client.post(URL, json=big)
        batch = client.post(f"{URL}/batch", json=[big])
        store = client.app.state.store  # type: ignore[attr-defined]
        store._writer.run(lambda conn: None)  # the audit write is queued, not awaited: flush it
        rejected = [r for r in store.audit_records(limit=100) if r.kind == "detection.rejected"]
        metrics = client.get("/metrics").text
    assert (answer.status_code, batch.status_code) == (413, 413)
    # It left no record: a detection refused for its size was the one refusal not audited.
    assert [(r.data["reason"], r.data["route"]) for r in rejected] == [
        ("too_large", URL),
        ("too_large", f"{URL}/batch"),
    ]
    assert rejected[0].data["message"] == "request body is over the 4096 byte limit"
    assert rejected[0].data["credential"] == "key"
    assert too_large(metrics) == before + 2


@pytest.mark.parametrize("url", [URL, f"{URL}/batch"])
def test_a_compressed_body_is_415_saying_so(client: TestClient, url: str) -> None:
    # It was read as JSON: "not valid JSON: 'utf-8' codec can't decode byte 0x8b".
    plain = json.dumps(EXAMPLE if url == URL else [EXAMPLE]).encode()
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    answer = client.post(url, content=gzip.compress(plain), headers=headers)
    assert answer.status_code == 415
    assert "Content-Encoding 'gzip' is not accepted" in answer.json()["detail"]
    same = client.post(url, content=plain, headers={**headers, "Content-Encoding": "identity"})
    assert same.status_code == 202, same.text


@pytest.mark.parametrize("url", [URL, f"{URL}/batch", "/api/v1/auth/token", "/api/v1/keys"])
def test_an_oversized_chunked_body_is_413_on_every_route(tmp_path: Path, url: str) -> None:
    settings = app_settings(tmp_path, max_body_bytes=4096)

    def chunks() -> Any:  # no Content-Length: sent chunked
        yield b'{"name": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    with TestClient(create_app(settings), headers=ADMIN_HEADERS) as client:
        answer = client.post(url, content=chunks(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 413, answer.text
    assert "4096 byte limit" in answer.json()["detail"]


def test_oversized_image_is_413(tmp_path: Path) -> None:
    settings = app_settings(tmp_path, max_image_bytes=2048)
    image = _jpeg(400, 400)
    assert len(image) > 2048
    body = example(image={"media_type": "image/jpeg", "data": base64.b64encode(image).decode()})
    with TestClient(create_app(settings), headers=ADMIN_HEADERS) as client:
        assert client.post(URL, json=body).status_code == 413


def test_non_image_labelled_jpeg_is_422(client: TestClient) -> None:
    fake = base64.b64encode(b"<html>not a jpeg</html>").decode()
    answer = client.post(URL, json=example(image={"media_type": "image/jpeg", "data": fake}))
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["field"] == "image"


def test_png_declared_as_jpeg_is_422(client: TestClient) -> None:
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, "PNG")
    body = example(
        image={"media_type": "image/jpeg", "data": base64.b64encode(out.getvalue()).decode()}
    )
    answer = client.post(URL, json=body)
    assert answer.status_code == 422
    assert "image/png" in answer.json()["detail"]


def test_multipart_image_is_stored_and_linked_from_the_cot(client: TestClient) -> None:
    image = _jpeg()
    answer = client.post(
        URL,
        files={
            "detection": (None, json.dumps(EXAMPLE), "application/json"),
            "image": ("frame.jpg", image, "image/jpeg"),
        },
    )
    assert answer.status_code == 202, answer.text
    served = client.get(f"{URL}/{EXAMPLE['id']}/image")
    assert served.status_code == 200
    assert served.content == image
    assert served.headers["content-type"] == "image/jpeg"
    cot = etree.fromstring(client.get(f"{URL}/{EXAMPLE['id']}/cot").content)
    links = [str(el.get("url")) for el in cot.iter() if el.get("url")]
    assert any(link.endswith(f"/api/v1/detections/{EXAMPLE['id']}/image") for link in links)


def test_multipart_detection_may_come_as_a_file_part_beside_the_image(
    client: TestClient,
) -> None:
    # curl -F detection=@det.json -F image=@frame.jpg: both parts are files (was 422 "Too
    # many files"); a part type is a MIME type, so its case does not matter
    image = _jpeg()
    answer = client.post(
        URL,
        files={
            "detection": ("det.json", json.dumps(EXAMPLE).encode(), "application/json"),
            "image": ("frame.jpg", image, "IMAGE/JPEG"),
        },
    )
    assert answer.status_code == 202, answer.text
    assert client.get(f"{URL}/{EXAMPLE['id']}/image").content == image


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), (30, 200, 30)).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize(
    ("part_type", "image", "stored_as"),
    [
        ("image/jpg", _jpeg(), "image/jpeg"),
        ("image/pjpeg", _jpeg(), "image/jpeg"),
        ("image/x-png", _png(), "image/png"),
        ("application/octet-stream", _png(), "image/png"),
    ],
)
def test_multipart_image_types_cameras_and_libraries_send_are_taken(
    client: TestClient, part_type: str, image: bytes, stored_as: str
) -> None:
    # image/jpg was refused "not accepted (JPEG or PNG only)" for a JPEG
    answer = client.post(
        URL,
        files={
            "detection": (None, json.dumps(EXAMPLE), "application/json"),
            "image": ("frame", image, part_type),
        },
    )
    assert answer.status_code == 202, answer.text
    served = client.get(f"{URL}/{EXAMPLE['id']}/image")
    assert served.content == image
    assert served.headers["content-type"] == stored_as


def test_multipart_image_named_jpg_but_holding_a_png_is_refused(client: TestClient) -> None:
    answer = client.post(
        URL,
        files={
            "detection": (None, json.dumps(EXAMPLE), "application/json"),
            "image": ("frame.jpg", _png(), "image/jpg"),
        },
    )
    assert answer.status_code == 422
    assert "declared image/jpeg but its bytes are image/png" in answer.json()["detail"]


@pytest.mark.parametrize(
    ("parts", "field"),
    [
        (
            [("detection", (None, json.dumps(example(id="one")))), ("detection", (None, "{}"))],
            "detection",
        ),
        ([("detection", (None, json.dumps(EXAMPLE))), ("image", (None, "not a file"))], "image"),
        (
            [("detection", (None, json.dumps(EXAMPLE))), ("imgae", ("a.jpg", b"x", "image/jpeg"))],
            "imgae",
        ),
    ],
    ids=["two-detections", "image-as-text", "unknown-part"],
)
def test_multipart_parts_that_would_be_dropped_are_refused(
    client: TestClient, parts: list[tuple[str, tuple[str | None, Any]]], field: str
) -> None:
    answer = client.post(URL, files=parts)
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"][0]["field"] == field
    assert client.get(f"{URL}/{EXAMPLE['id']}").status_code == 404
    assert client.get(f"{URL}/one").status_code == 404


def test_undecodable_image_says_so_plainly(client: TestClient) -> None:
    answer = client.post(
        URL,
        files={
            "detection": (None, json.dumps(EXAMPLE), "application/json"),
            "image": ("frame.jpg", b"\xff\xd8 not really a jpeg", "image/jpeg"),
        },
    )
    assert answer.status_code == 422
    assert "cannot be decoded as JPEG or PNG" in answer.json()["detail"]
    assert "BytesIO" not in answer.json()["detail"]


def test_inline_image_round_trips(client: TestClient) -> None:
    image = _jpeg()
    body = example(image={"media_type": "image/jpeg", "data": base64.b64encode(image).decode()})
    assert client.post(URL, json=body).status_code == 202
    assert client.get(f"{URL}/{EXAMPLE['id']}/image").content == image


def test_the_image_of_a_detection_refused_409_is_not_kept(client: TestClient) -> None:
    """The image row is written in the detection's own commit, so a refused detection leaves
    no image behind (it used to be stored first, in a commit of its own)."""
    first, other = _jpeg(), _jpeg(32, 32)
    inline = {"media_type": "image/jpeg"}
    body = example(image={**inline, "data": base64.b64encode(first).decode()})
    assert client.post(URL, json=body).status_code == 202
    clash = example(image={**inline, "data": base64.b64encode(other).decode()})
    assert client.post(URL, json=clash).status_code == 409
    store = client.app.state.store  # type: ignore[attr-defined]
    assert store.get_image(hashlib.sha256(first).hexdigest()) == ("image/jpeg", first)
    assert store.get_image(hashlib.sha256(other).hexdigest()) is None
    assert client.get(f"{URL}/{EXAMPLE['id']}/image").content == first
    # The same in a batch: the refused item's image is not kept either.
    third = _jpeg(16, 16)
    items = [
        example(id="fresh", image={**inline, "data": base64.b64encode(first).decode()}),
        example(image={**inline, "data": base64.b64encode(third).decode()}),
    ]
    answer = client.post(f"{URL}/batch", json=items)
    assert [r["status"] for r in answer.json()["results"]] == [202, 409]
    assert store.get_image(hashlib.sha256(third).hexdigest()) is None
    # Nor their files (they were written before the commit found the conflict, and stayed);
    # a refused detection naming a stored image leaves that one's file alone.
    again = example(confidence=0.3, image={**inline, "data": base64.b64encode(first).decode()})
    assert client.post(URL, json=again).status_code == 409
    store._writer.run(lambda conn: None)  # the deletes are queued behind the writer
    files = {p.name for p in store.images_dir.rglob("*") if p.is_file()}
    assert files == {hashlib.sha256(first).hexdigest()}
    assert client.get(f"{URL}/{EXAMPLE['id']}/image").content == first


def test_image_files_live_in_the_data_dir_and_one_service_never_deletes_another_s(
    tmp_path: Path, auth_headers: dict[str, str]
) -> None:
    """They lived next to the database file: not in COPBRIDGE_DATA_DIR, as the contract says,
    and two databases in one folder shared one images folder, where a 409 in one service
    deleted the file of an image the other had stored."""
    image = _jpeg()
    sha256 = hashlib.sha256(image).hexdigest()
    inline = {"media_type": "image/jpeg", "data": base64.b64encode(image).decode()}
    databases = tmp_path / "databases"

    def service(name: str) -> TestClient:
        url = f"sqlite:///{databases / f'{name}.db'}"
        return TestClient(create_app(app_settings(tmp_path / name, url=url)), headers=auth_headers)

    with service("one") as one, service("two") as two:
        assert one.post(URL, json=example(id="m1", image=inline)).status_code == 202
        assert (tmp_path / "one" / "images" / sha256[:2] / sha256).read_bytes() == image
        assert not (databases / "images").exists()
        assert two.post(URL, json=example(id="z1")).status_code == 202
        assert two.post(URL, json=example(id="z1", image=inline)).status_code == 409
        two.app.state.store._writer.run(lambda conn: None)  # type: ignore[attr-defined]
        assert one.get(f"{URL}/m1/image").content == image


def test_an_image_stored_next_to_the_database_by_an_earlier_version_is_still_served(
    tmp_path: Path, auth_headers: dict[str, str]
) -> None:
    image = _jpeg()
    sha256 = hashlib.sha256(image).hexdigest()
    inline = {"media_type": "image/jpeg", "data": base64.b64encode(image).decode()}
    settings = app_settings(tmp_path / "data", url=f"sqlite:///{tmp_path / 'db' / 'api.db'}")
    with TestClient(create_app(settings), headers=auth_headers) as client:
        assert client.post(URL, json=example(image=inline)).status_code == 202
    earlier = tmp_path / "db" / "images" / sha256[:2]  # where versions before this kept it
    earlier.mkdir(parents=True)
    (tmp_path / "data" / "images" / sha256[:2] / sha256).rename(earlier / sha256)
    with TestClient(create_app(settings), headers=auth_headers) as client:
        served = client.get(f"{URL}/{EXAMPLE['id']}/image")
    assert served.status_code == 200
    assert served.content == image


def test_an_image_file_gone_before_its_commit_is_written_again_in_it(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused request's image is forgotten in the writer; a request with the same bytes
    that kept the file just before must not commit its row without the file."""
    store = client.app.state.store  # type: ignore[attr-defined]
    keep, calls = store.keep_image_files, []

    def kept_then_forgotten(images: list[ImageBlob]) -> None:
        keep(images)
        calls.append(len(images))
        if len(calls) == 1:  # the request's own keep: then its file goes, as if forgotten
            for image in images:
                store._image_path(image.sha256).unlink()

    monkeypatch.setattr(store, "keep_image_files", kept_then_forgotten)
    image = _jpeg()
    body = example(image={"media_type": "image/jpeg", "data": base64.b64encode(image).decode()})
    assert client.post(URL, json=body).status_code == 202
    assert client.get(f"{URL}/{EXAMPLE['id']}/image").content == image
    assert calls == [1, 1]  # kept, gone, kept again inside the commit


def test_a_detection_refused_for_its_geometry_leaves_no_image_file(client: TestClient) -> None:
    """The file was written before the detection was located: every refused upload stayed
    on disk, unreferenced (a client could fill the disk with refused uploads)."""
    store = client.app.state.store  # type: ignore[attr-defined]
    sky = example(id="sky", image={"media_type": "image/jpeg", "data": _b64(_jpeg())})
    sky["gimbal"] = {**sky["gimbal"], "elevation": 10.0}  # above the horizon
    assert client.post(URL, json=sky).status_code == 422
    multipart = client.post(
        URL,
        files={
            "detection": (None, json.dumps(_no_image(sky))),
            "image": ("a.jpg", _jpeg(24, 24), "image/jpeg"),
        },
    )
    assert multipart.status_code == 422, multipart.text
    batch = [{**sky, "id": "sky-2", "image": {**sky["image"], "data": _b64(_jpeg(16, 16))}}]
    assert client.post(f"{URL}/batch", json=batch).json()["results"][0]["status"] == 422
    assert [p for p in store.images_dir.rglob("*") if p.is_file()] == []


def _no_image(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "image"}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_retry_with_its_image_is_a_duplicate_and_the_image_still_served(
    client: TestClient,
) -> None:
    image = _jpeg()
    body = example(image={"media_type": "image/jpeg", "data": base64.b64encode(image).decode()})
    assert client.post(URL, json=body).json()["duplicate"] is False
    assert client.post(URL, json=body).json()["duplicate"] is True
    batch = client.post(f"{URL}/batch", json=[body, example(id="other")]).json()
    assert [r["answer"]["duplicate"] for r in batch["results"]] == [True, False]
    assert client.get(f"{URL}/{EXAMPLE['id']}/image").content == image


def test_an_image_file_that_cannot_be_kept_is_503_and_nothing_is_stored(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = client.app.state.store  # type: ignore[attr-defined]

    def disk_full(images: object) -> None:
        raise StoreUnavailable("cannot store the image: No space left on device")

    monkeypatch.setattr(store, "keep_image_files", disk_full)
    image = _jpeg()
    body = example(image={"media_type": "image/jpeg", "data": base64.b64encode(image).decode()})
    assert client.post(URL, json=body).status_code == 503
    assert client.get(f"{URL}/{EXAMPLE['id']}").status_code == 404
    assert store.get_image(hashlib.sha256(image).hexdigest()) is None


def test_batch_gives_per_item_results_in_input_order(client: TestClient) -> None:
    bad = example(id="bad", bbox={"x": 1900, "y": 0, "width": 50, "height": 10})
    items = [example(id="a1"), bad, example(id="a2"), example(id="a1")]
    answer = client.post(f"{URL}/batch", json={"detections": items})
    assert answer.status_code == 207
    body = answer.json()
    assert [r["index"] for r in body["results"]] == [0, 1, 2, 3]
    assert [r["status"] for r in body["results"]] == [202, 422, 202, 202]
    assert body["results"][3]["answer"]["duplicate"] is True
    assert body["results"][1]["error"]["errors"][0]["field"] == "detections[1].bbox"
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (2, 1, 1)


def test_a_frame_from_the_future_is_refused_past_the_allowed_clock_skew(
    client: TestClient,
) -> None:
    # delivery keeps a track's newest frame: one stamped an hour ahead hid every real frame
    # of its track for that hour (found by a delivery probe)
    def at(seconds: float) -> str:
        return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()

    ahead = client.post(URL, json=example(id="ahead", time=at(3600)))
    assert ahead.status_code == 422
    assert ahead.json()["errors"][0]["field"] == "time"
    assert "COPBRIDGE_MAX_FUTURE_S" in ahead.json()["detail"]
    assert client.post(URL, json=example(id="skewed", time=at(60))).status_code == 202
    batch = client.post(
        f"{URL}/batch", json=[example(id="b-now", time=at(0)), example(id="b-ahead", time=at(900))]
    ).json()
    assert [r["status"] for r in batch["results"]] == [202, 422]
    assert batch["results"][1]["error"]["errors"][0]["field"] == "detections[1].time"
    assert client.get(f"{URL}/ahead").status_code == 404


def test_batch_refuses_odd_items_alone_naming_them(client: TestClient) -> None:
    # a year-9999 time once overflowed the stale time and failed the whole batch with a 500
    items: list[Any] = [
        example(id="ok1"),
        example(id="late", time="9999-12-31T23:59:59Z"),
        None,
        1,
        [],
    ]
    answer = client.post(f"{URL}/batch", json=items)
    assert answer.status_code == 207, answer.text
    results = answer.json()["results"]
    assert [r["status"] for r in results] == [202, 422, 422, 422, 422]
    fields = [r["error"]["errors"][0]["field"] for r in results[1:]]
    assert fields == ["detections[1].time", "detections[2]", "detections[3]", "detections[4]"]
    assert client.get(f"{URL}/ok1").status_code == 200


def test_batch_wrapper_with_an_unknown_field_is_422(client: TestClient) -> None:
    answer = client.post(f"{URL}/batch", json={"detections": [example()], "dections": []})
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["field"] == "dections"
    assert client.get(f"{URL}/{EXAMPLE['id']}").status_code == 404


def test_batch_of_only_valid_items_is_202_and_accepts_a_bare_list(client: TestClient) -> None:
    answer = client.post(f"{URL}/batch", json=[example(id=f"b{i}") for i in range(20)])
    assert answer.status_code == 202
    assert answer.json()["accepted"] == 20


def test_batch_images_are_verified_per_item_and_kept_together(client: TestClient) -> None:
    """Each item's image is checked on its own (a bad one refuses only its item); the good
    ones, one of them shared by two items, are all served back and linked from the CoT."""
    red, blue = _jpeg(), _jpeg(32, 24)
    inline = {"media_type": "image/jpeg"}
    items = [
        example(id="i0", image={**inline, "data": base64.b64encode(red).decode()}),
        example(id="i1", image={**inline, "data": base64.b64encode(b"<html/>").decode()}),
        example(id="i2", image={**inline, "data": base64.b64encode(blue).decode()}),
        example(id="i3", image={**inline, "data": base64.b64encode(red).decode()}),
        example(id="i4"),
    ]
    answer = client.post(f"{URL}/batch", json=items)
    assert answer.status_code == 207, answer.text
    results = answer.json()["results"]
    assert [r["status"] for r in results] == [202, 422, 202, 202, 202]
    assert results[1]["error"]["errors"][0]["field"] == "detections[1].image"
    for ident, image in (("i0", red), ("i2", blue), ("i3", red)):
        assert client.get(f"{URL}/{ident}/image").content == image
        assert f"/api/v1/detections/{ident}/image" in client.get(f"{URL}/{ident}/cot").text
    assert client.get(f"{URL}/i4/image").status_code == 404
    assert client.get(f"{URL}/i1").status_code == 404


def test_batch_over_1000_items_is_413(client: TestClient) -> None:
    answer = client.post(f"{URL}/batch", json=[{}] * 1001)
    assert answer.status_code == 413


def test_a_batch_commits_slice_by_slice_and_says_which_slices_were_stored(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = client.app.state.pipeline  # type: ignore[attr-defined]
    original = pipeline.commit
    calls: list[int] = []

    async def second_fails(prepared: Any) -> Any:
        calls.append(len(prepared))
        if len(calls) == 2:
            raise StoreUnavailable("disk gone")
        return await original(prepared)

    monkeypatch.setattr(pipeline, "commit", second_fails)
    batch = [example(id=f"slice-{i}", track_id=str(i)) for i in range(600)]
    answer = client.post(f"{URL}/batch", json=batch)
    assert calls == [250, 250]  # the live feed's commits fit between the slices
    assert answer.status_code == 207
    statuses = [r["status"] for r in answer.json()["results"]]
    assert statuses == [202] * 250 + [503] * 350
    assert client.get(f"{URL}/slice-249").status_code == 200
    assert client.get(f"{URL}/slice-250").status_code == 404
    monkeypatch.setattr(pipeline, "commit", original)
    retried = client.post(f"{URL}/batch", json=batch).json()
    assert (retried["accepted"], retried["duplicates"]) == (350, 250)


def test_a_batch_the_store_refuses_whole_is_503_with_retry_after(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refused(prepared: Any) -> Any:
        raise StoreUnavailable("database is locked")

    monkeypatch.setattr(client.app.state.pipeline, "commit", refused)  # type: ignore[attr-defined]
    answer = client.post(f"{URL}/batch", json=[example(id=f"r{i}") for i in range(2)])
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "1"  # as a single detection's 503
    assert [r["status"] for r in answer.json()["results"]] == [503, 503]


def test_list_filters_and_paginates(client: TestClient) -> None:
    for i in range(5):
        sensor = {"id": "cam-a" if i % 2 else "cam-b"}
        body = example(id=f"l{i}", sensor=sensor, label="car" if i < 2 else "person")
        body["time"] = f"2026-11-28T03:5{i}:00Z"
        assert client.post(URL, json=body).status_code == 202
    page = client.get(URL, params={"limit": 2}).json()
    assert [d["id"] for d in page["items"]] == ["l0", "l1"]
    rest = client.get(URL, params={"limit": 10, "cursor": page["next_cursor"]}).json()
    assert [d["id"] for d in rest["items"]] == ["l2", "l3", "l4"]
    assert rest["next_cursor"] is None
    assert [d["id"] for d in client.get(URL, params={"sensor": "cam-a"}).json()["items"]] == [
        "l1",
        "l3",
    ]
    assert [d["id"] for d in client.get(URL, params={"label": "car"}).json()["items"]] == [
        "l0",
        "l1",
    ]
    window = {"since": "2026-11-28T03:51:00Z", "until": "2026-11-28T03:53:00Z"}
    assert [d["id"] for d in client.get(URL, params=window).json()["items"]] == ["l1", "l2"]
    assert client.get(URL, params={"since": "yesterday"}).status_code == 422
    # A Unix number is not read as seconds since 1970: the filter would silently match nothing
    # (or everything), so it is refused like the body's time.
    for bad in ({"since": "1764301860"}, {"until": "20261128"}):
        refused = client.get(URL, params=bad)
        assert refused.status_code == 422, bad
        assert "RFC 3339" in refused.text


def test_a_client_at_the_end_of_the_list_follows_what_arrives_with_the_tail_cursor(
    client: TestClient,
) -> None:
    """The last page had no cursor at all: a client following new detections had to read the
    last page again (repeats) or start over."""
    for i in range(3):
        assert client.post(URL, json=example(id=f"t{i}")).status_code == 202
    first = client.get(URL, params={"limit": 2}).json()
    last = client.get(URL, params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert ([d["id"] for d in last["items"]], last["next_cursor"]) == (["t2"], None)
    empty = client.get(URL, params={"cursor": last["tail_cursor"]}).json()
    assert (empty["items"], empty["tail_cursor"]) == ([], last["tail_cursor"])
    assert client.post(URL, json=example(id="t3")).status_code == 202
    newer = client.get(URL, params={"cursor": empty["tail_cursor"]}).json()
    assert [d["id"] for d in newer["items"]] == ["t3"]
    audit = client.get("/api/v1/audit", params={"limit": 1000}).json()
    assert audit["next_cursor"] is None
    assert audit["tail_cursor"] == str(audit["items"][-1]["seq"])
    assert client.post(URL, json=example(id="t4")).status_code == 202
    since = client.get("/api/v1/audit", params={"cursor": audit["tail_cursor"]}).json()
    assert {r["subject"] for r in since["items"]} >= {"t4"}
    assert all(r["seq"] > int(audit["tail_cursor"]) for r in since["items"])


def test_detection_row_outbox_rows_and_audit_are_one_transaction(client: TestClient) -> None:
    assert client.post(URL, json=taken_now()).status_code == 202
    store = client.app.state.store  # type: ignore[attr-defined]
    stats = store.outbox_stats(DESTINATIONS.split(","))
    # The detection's event and the sensor's platform event, for each destination.
    assert [s.pending for s in stats] == [2, 2]
    kinds = [r.kind for r in store.audit_records(limit=100)]
    assert kinds.count("detection.accepted") == 1
    assert kinds.count("event.queued") == 2
    assert store.verify_audit().ok


def test_platform_event_is_emitted_at_most_once_per_interval(client: TestClient) -> None:
    for i in range(3):
        assert client.post(URL, json=taken_now(id=f"p{i}")).status_code == 202
    store = client.app.state.store  # type: ignore[attr-defined]
    platform = [e for e in store.feed_since(0, 0) if e.uid == "copbridge.uav-7"]
    assert len(platform) == 1
    event = parse_xml(platform[0].payload)
    assert event.type == "a-f-A-M-F-Q"


def test_a_late_detection_never_moves_the_platform_back_on_the_map(
    tmp_path: Path, auth_headers: dict[str, str]
) -> None:
    """An offline detector uploading its buffer: the platform event of a detection taken ten
    minutes ago went out stamped as current, after a newer one, and sent the sensor back."""
    settings = app_settings(tmp_path, platform_interval_s=0.05)
    with TestClient(create_app(settings), headers=auth_headers) as client:
        store = client.app.state.store  # type: ignore[attr-defined]

        def platform_events() -> list[Any]:
            return [e for e in store.feed_since(0, 0) if e.uid == "copbridge.uav-7"]

        now = datetime.now(UTC)
        here = {"lat": 41.2}  # the late ones are where the example is, 41.1438
        fresh = taken_now(id="fresh", platform={**EXAMPLE["platform"], **here})
        assert client.post(URL, json=fresh).status_code == 202
        [shown] = platform_events()
        time.sleep(0.1)  # past the interval
        for age_s, name in ((600, "ten-minutes-old"), (30, "half-a-minute-old")):
            late = example(id=name, time=(now - timedelta(seconds=age_s)).isoformat())
            assert client.post(URL, json=late).status_code == 202
            assert platform_events() == [shown], name
        newer = taken_now(id="newer")  # at once: the late ones used no slot
        assert client.post(URL, json=newer).status_code == 202
        events = platform_events()
        assert len(events) == 2
        event = parse_xml(events[1].payload)  # valid from the pose's time, 60 s on from now
        assert abs((event.start - datetime.fromisoformat(newer["time"])).total_seconds()) < 1e-3
        assert event.stale == event.time + timedelta(seconds=60)
    # A detection a few minutes old (a detector's clock behind, a slow pipeline) still shows
    # its sensor while the detection itself is shown: only a stale one shows none.
    with TestClient(create_app(settings), headers=auth_headers) as client:
        store = client.app.state.store  # type: ignore[attr-defined]
        minutes_old = datetime.now(UTC) - timedelta(seconds=200)  # its event stale in 100 s
        other = {**EXAMPLE["sensor"], "id": "uav-9"}
        body = example(id="minutes-old", sensor=other, time=minutes_old.isoformat())
        assert client.post(URL, json=body).status_code == 202
        [marker] = [e for e in store.feed_since(0, 0) if e.uid == "copbridge.uav-9"]
        event = parse_xml(marker.payload)
        assert abs((event.start - minutes_old).total_seconds()) < 1e-3
        assert event.stale > datetime.now(UTC)


def test_rejections_are_audited_with_their_reason(client: TestClient) -> None:
    client.post(URL, json=example(confidence=3))
    store = client.app.state.store  # type: ignore[attr-defined]
    store._writer.run(lambda conn: None)  # the audit write is queued, not awaited: flush it
    rejected = [r for r in store.audit_records(limit=100) if r.kind == "detection.rejected"]
    assert len(rejected) == 1
    assert rejected[0].data["reason"] == "contract"


def test_every_refused_detection_is_audited_with_its_reason_and_id_batch_items_too(
    client: TestClient,
) -> None:
    store = client.app.state.store  # type: ignore[attr-defined]
    assert client.post(URL, json=example(id="taken")).status_code == 202
    assert client.post(URL, json=example(id="taken", confidence=0.5)).status_code == 409
    sky = example(id="sky")
    sky["gimbal"]["elevation"] = 10.0  # above the horizon
    batch = [sky, example(id="odd", confidence=7), example(id="taken", confidence=0.4)]
    answer = client.post(f"{URL}/batch", json=batch)
    assert [r["status"] for r in answer.json()["results"]] == [422, 422, 409]
    assert all("_refusal" not in r for r in answer.json()["results"])
    store._writer.run(lambda conn: None)  # the audit writes are queued, not awaited
    rejected = [
        (r.subject, r.data["reason"], r.data.get("index"))
        for r in store.audit_records(kind="detection.rejected", limit=100)
    ]
    assert rejected == [
        ("taken", "conflict", None),
        ("sky", "geometry", 0),
        ("odd", "contract", 1),
        ("taken", "conflict", 2),
    ]


def test_an_agl_altitude_s_stated_error_widens_the_error_circle(client: TestClient) -> None:
    """With an AGL platform and no ground height the ground is HAE - AGL, and the stated
    vertical_m was cancelled out with the sensor's height: CE90 stayed 86.9 m at vertical_m
    100 where sampling gave 300.9 m (90 % of points outside it)."""

    def ce90(n: int, **uncertainty: float) -> float:
        body = example(id=f"agl-{n}", uncertainty={"horizontal_m": 5.0, **uncertainty})
        body.pop("ground", None)
        body["platform"] = {**body["platform"], "alt": 1000.0, "alt_ref": "agl"}
        body["gimbal"] = {"azimuth": 0.0, "elevation": -30.0, "roll": 0.0}
        answer = client.post(URL, json=body)
        assert answer.status_code == 202, answer.text
        assert answer.json()["location"]["ground"] == "agl"
        return float(answer.json()["location"]["ce90"])

    small, large = ce90(1, vertical_m=10.0), ce90(2, vertical_m=100.0)
    assert large > 2.5 * small
    assert large == pytest.approx(ce90(3, vertical_m=3.0, ground_m=math.hypot(100.0, 5.0)))


def test_a_refusal_of_huge_or_countless_unknown_fields_is_audited_in_bounded_size(
    client: TestClient,
) -> None:
    """The trail keeps every record for good: a 300 kB field name made a 600 kB record. The
    first five errors are kept, with the count of the rest."""
    store = client.app.state.store  # type: ignore[attr-defined]
    body = example(id="bloat")
    body["x" * 300_000] = 1
    body.update({f"k{i}": i for i in range(5_000)})
    answer = client.post(URL, json=body)
    assert answer.status_code == 422
    named = {e["field"] for e in answer.json()["errors"]}
    assert "x" * 64 + "…" in named
    assert "k4999" in named
    store._writer.run(lambda conn: None)  # the audit write is queued, not awaited: flush it
    [record] = store.audit_records(kind="detection.rejected", limit=10)
    assert len(json.dumps(record.data)) < 20_000
    assert len(record.data["errors"]) == 5
    assert record.data["errors_left_out"] == 4996
    assert store.verify_audit().ok


def test_a_refusal_echoing_a_lone_surrogate_is_still_audited(client: TestClient) -> None:
    store = client.app.state.store  # type: ignore[attr-defined]
    raw = b'{"detections": [], "\\ud800": 1}'
    answer = client.post(f"{URL}/batch", content=raw, headers={"Content-Type": "application/json"})
    assert answer.status_code == 422
    store._writer.run(lambda conn: None)  # the audit write is queued, not awaited: flush it
    [record] = store.audit_records(kind="detection.rejected", limit=10)
    assert record.data["batch"] == "\\ud800: unknown field"  # the escape, as text
    assert store.verify_audit().ok


def test_a_trailing_slash_is_a_404_not_a_redirect_to_the_client_s_host(client: TestClient) -> None:
    answer = client.post(
        f"{URL}/", json=EXAMPLE, headers={"Host": "evil.example"}, follow_redirects=False
    )
    assert answer.status_code == 404
    assert "location" not in answer.headers


def test_a_detection_stale_on_arrival_is_counted_and_answered_with_a_warning(
    client: TestClient,
) -> None:
    """202 and expired unsent, as the contract allows, but a detector whose clock is behind put
    nothing on any map and nothing said so: it is now counted (and logged), and its answer
    carries a warning."""

    def stale_count() -> float:
        text = client.get("/metrics").text
        [line] = [x for x in text.splitlines() if x.startswith(_STALE_METRIC)]
        return float(line.split()[-1])

    before = stale_count()
    fresh = example(id="fresh", time=datetime.now(UTC).isoformat().replace("+00:00", "Z"))
    answer = client.post(URL, json=fresh)
    assert answer.status_code == 202
    assert "warnings" not in answer.json()
    assert stale_count() == before
    old = client.post(URL, json=example(id="old"))  # the example: 6 days old
    assert old.status_code == 202
    [warning] = old.json()["warnings"]
    assert warning.startswith(
        f"stale on arrival: its stale time {old.json()['stale']} had passed when it was received"
    )
    assert "will expire without being delivered" in warning
    again = client.post(URL, json=example(id="old"))
    assert again.json()["duplicate"] is True
    assert again.json()["warnings"] == [warning]  # the first answer, again
    assert stale_count() == before + 1
    batch = client.post(f"{URL}/batch", json=[example(id="old-2"), {**fresh, "id": "fresh-2"}])
    results = batch.json()["results"]
    assert "stale on arrival" in results[0]["answer"]["warnings"][0]
    assert "warnings" not in results[1]["answer"]
    assert stale_count() == before + 2


_STALE_METRIC = "copbridge_detections_stale_on_arrival_total "
