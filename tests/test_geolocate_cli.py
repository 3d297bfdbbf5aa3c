"""``copbridge geolocate``: the offline form of the pipeline, one line per input in order."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient
from lxml import etree
from PIL import Image

from copbridge.api.app import create_app
from tests.api.conftest import EXAMPLE, app_settings, example
from tests.conftest import ADMIN_HEADERS

ROOT = Path(__file__).resolve().parents[1]


def _geolocate(stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "copbridge", "geolocate", *args, "-"],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


def test_one_pretty_printed_detection_gives_the_api_answer(tmp_path: Path) -> None:
    result = _geolocate(json.dumps(EXAMPLE, indent=2))
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    offline = json.loads(line)
    with TestClient(create_app(app_settings(tmp_path)), headers=ADMIN_HEADERS) as client:
        online = client.post("/api/v1/detections", json=EXAMPLE).json()
    # The service's own fields (and its warning that this 6-day-old example expires unsent)
    service_only = ("status", "duplicate", "warnings")
    assert "warnings" in online
    assert offline == {k: v for k, v in online.items() if k not in service_only}


def test_json_lines_keep_their_order_and_a_bad_one_is_named() -> None:
    lines = [
        json.dumps(example(id="first")),
        json.dumps(example(id="broken", bbox={"x": 5000, "y": 0, "width": 10, "height": 10})),
        json.dumps(example(id="third")),
        "{not json",
        # each of these once ended the run with a traceback, the lines after it never read
        json.dumps(example(id="late", time="9999-12-31T23:59:59Z")),
        '{"label": ' + "9" * 5000 + "}",
        "[" * 1000 + "]" * 1000,
        json.dumps(example(id="lone", label="\ud800")),  # named "body", not "label", before
        json.dumps(example(id="last")),
    ]
    result = _geolocate("\n".join(lines) + "\n")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o.get("id") for o in out] == [
        "first",
        "broken",
        "third",
        None,
        "late",
        None,
        None,
        "lone",
        "last",
    ]
    assert out[1]["line"] == 2
    assert out[1]["errors"][0]["field"] == "bbox"
    assert "location" in out[2]
    fields = [o["errors"][0]["field"] for o in out[3:8]]
    # The 5,000-digit number is named where it is, as a NaN is (they were "body")
    assert fields == ["body", "time", "label", "body", "label"]
    assert "location" in out[8]


def test_cot_format_prints_one_event_per_detection() -> None:
    lines = [json.dumps(example(id=f"c{i}", track_id=str(i))) for i in range(3)]
    result = _geolocate("\n".join(lines), "--format", "cot")
    assert result.returncode == 0, result.stderr
    events = [etree.fromstring(line.encode()) for line in result.stdout.splitlines()]
    assert [e.get("uid") for e in events] == [f"copbridge.uav-7.{i}" for i in range(3)]
    assert all(e.get("how") == "m-i" for e in events)


def test_a_nan_in_one_element_of_an_array_refuses_that_element_not_the_rest() -> None:
    items = [json.dumps(example(id=f"a{i}"), indent=2) for i in range(4)]
    items[1] = items[1].replace('"confidence": 0.91', '"confidence": NaN')
    items[2] = items[2].replace('"confidence": 0.91', '"confidence": 1' + "0" * 5000)
    result = _geolocate("[\n" + ",\n".join(items) + "\n]\n")
    assert result.returncode == 1
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert ["location" in o for o in out] == [True, False, False, True]
    assert "NaN is not a JSON number" in out[1]["errors"][0]["message"]
    assert out[3]["id"] == "a3"


def test_cot_format_keeps_a_line_break_the_label_holds() -> None:
    """The offline event is the one the service stores: a newline in text stays one
    (as &#10;), instead of being deleted to keep the event on one line."""
    result = _geolocate(json.dumps(example(label="person\nnew")), "--format", "cot")
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    remarks = etree.fromstring(line.encode()).findtext("detail/remarks")
    assert remarks is not None
    assert remarks.startswith("person\nnew")


def test_a_line_that_is_not_an_object_is_refused_as_the_api_refuses_it() -> None:
    result = _geolocate('"person"\n')
    assert result.returncode == 1
    [line] = result.stdout.splitlines()
    assert json.loads(line)["error"] == "body: expected a JSON object (one detection), not a string"


def test_an_image_the_api_would_refuse_is_an_error_line_and_a_good_one_is_linked() -> None:
    # The image was not looked at: "!!" as data, or text declared a PNG, printed an answer.
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    png = base64.b64encode(buffer.getvalue()).decode()
    lines = [
        json.dumps(example(id="bad-b64", image={"media_type": "image/png", "data": "!!"})),
        json.dumps(example(id="not-png", image={"media_type": "image/png", "data": "aGVsbG8="})),
        json.dumps(example(id="good", image={"media_type": "image/png", "data": png})),
    ]
    result = _geolocate("\n".join(lines), "--format", "cot")
    assert result.returncode == 1
    out = result.stdout.splitlines()
    assert [json.loads(o)["errors"][0]["field"] for o in out[:2]] == ["image", "image"]
    assert "base64" in json.loads(out[0])["error"]
    assert "/api/v1/detections/good/image" in out[2]


def test_a_nan_is_named_by_its_field_and_its_detection_by_its_id() -> None:
    """The API names the field holding a NaN; the offline form named the body, id null."""
    nan = json.dumps(example(id="nan")).replace('"confidence": 0.91', '"confidence": NaN')
    deep = json.dumps(example(id="deep")).replace('"roll": 0.0', '"roll": -Infinity', 1)
    result = _geolocate(nan + "\n" + deep + "\n")
    assert result.returncode == 1
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(o["id"], o["errors"][0]["field"]) for o in out] == [
        ("nan", "confidence"),
        ("deep", "gimbal.roll"),
    ]
    assert out[0]["error"] == "not JSON: confidence: NaN is not a JSON number"
