"""The batch path (``Pipeline.prepare_many``, one vectorised ``geo.locate`` per sigma group)
gives every detection the answer, events and refusal the one-by-one path gives it."""

from __future__ import annotations

import copy
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from copbridge.config import load_settings
from copbridge.cot import parse_xml
from copbridge.model import Answer, Detection
from copbridge.pipeline import Pipeline, Prepared, Rejection
from tests.api.conftest import EXAMPLE
from tests.geo.test_terrain import HILL_LON, SENSOR_LAT, _hill_tif

NOW = datetime(2026, 11, 28, 7, 0, 0, 123000, tzinfo=UTC)


def _varied(count: int, seed: int = 7) -> list[dict[str, Any]]:
    """Detections over every ground rule, camera form and sigma set, some of them unlocatable."""
    rng = random.Random(seed)
    bodies = []
    for i in range(count):
        body = copy.deepcopy(EXAMPLE)
        body["id"] = f"v-{i}"
        body["sensor"]["id"] = f"uav-{i % 3}"
        body["label"] = rng.choice(["person", "car", "boat", "drone", "Truck"])
        body["gimbal"]["elevation"] = rng.uniform(-89.0, -2.0)
        body["gimbal"]["azimuth"] = rng.uniform(-360.0, 360.0)
        body["platform"]["alt_ref"] = rng.choice(["hae", "msl", "agl"])
        x, y = rng.uniform(0, 1800), rng.uniform(0, 1000)
        body["bbox"] = {"x": x, "y": y, "width": 40, "height": 60}
        rule = i % 4
        if rule == 0:
            body["ground"] = {"height": rng.uniform(1500, 1900), "height_ref": "msl"}
        elif rule == 1:
            body["ground"] = {"height": rng.uniform(1500, 1900), "height_ref": "hae"}
        else:
            body.pop("ground")
        if i % 5 == 0:
            body.pop("uncertainty")
        if i % 6 == 0:
            body["camera"] = {
                "width": 1920,
                "height": 1080,
                "fx": 1500.0,
                "fy": 1490.0,
                "cx": 955.0,
                "cy": 545.0,
                "distortion": {"k1": -0.12, "k2": 0.03, "p1": 0.001},
            }
        if i % 7 == 0:
            body["camera"]["pixel_centres"] = "half-integer"
        if i % 11 == 0:
            body["gimbal"]["elevation"] = 12.0  # above the horizon: refused
        if i % 13 == 0:
            body["platform"]["pitch"] = 0.0
            body["gimbal"]["elevation"] = -0.3  # grazing: Monte Carlo CE90
        bodies.append(body)
    return bodies


def _one_by_one(pipeline: Pipeline, bodies: list[dict[str, Any]]) -> list[Prepared | Rejection]:
    out: list[Prepared | Rejection] = []
    for body in bodies:
        try:
            out.append(pipeline.prepare(Detection.model_validate(body), raw=body, now=NOW))
        except Rejection as exc:
            out.append(exc)
    return out


def _pipeline(tmp_path: Path, **settings: Any) -> Pipeline:
    return Pipeline(load_settings(database_url=f"sqlite:///{tmp_path / 'p.db'}", **settings))


def _assert_same(single: list[Prepared | Rejection], batch: list[Prepared | Rejection]) -> None:
    assert len(single) == len(batch)
    for one, many in zip(single, batch, strict=True):
        if isinstance(one, Rejection):
            assert isinstance(many, Rejection), one.message
            assert (many.field, many.message, many.reason) == (one.field, one.message, one.reason)
            continue
        assert isinstance(many, Prepared), many
        a, b = one.answer, many.answer
        for key in ("lat", "lon"):
            assert b["location"][key] == pytest.approx(a["location"][key], abs=2e-7)
        for key in ("hae", "ce90", "le90", "slant_range"):
            assert b["location"][key] == pytest.approx(a["location"][key], abs=0.02, rel=1e-6)
        for key in ("ground", "point"):
            assert b["location"][key] == a["location"][key]
        assert {k: v for k, v in b.items() if k != "location"} == {
            k: v for k, v in a.items() if k != "location"
        }
        r1, r2 = one.record, many.record
        assert (r2.body_hash, r2.detection_json, r2.events[0].uid) == (
            r1.body_hash,
            r1.detection_json,
            r1.events[0].uid,
        )
        assert (r1.platform_event is None) == (r2.platform_event is None)


def test_batch_gives_every_item_the_one_by_one_answer(tmp_path: Path) -> None:
    bodies = _varied(120)
    single = _one_by_one(_pipeline(tmp_path), bodies)
    batch = _pipeline(tmp_path).prepare_many(
        [(Detection.model_validate(b), b, None) for b in bodies], now=NOW
    )
    _assert_same(single, batch)
    grounds = {p.answer["location"]["ground"] for p in batch if isinstance(p, Prepared)}
    assert grounds == {"request", "agl", "ellipsoid"}
    assert sum(isinstance(p, Rejection) for p in batch) >= 5  # the refusals were exercised
    sampled = [p for p in single if isinstance(p, Prepared) and p.answer["location"]["ce90"] > 500]
    assert sampled, "no grazing ray in the set: the Monte Carlo branch went untested"


def test_batch_with_terrain_marches_each_ray_like_the_single_path(tmp_path: Path) -> None:
    terrain = _hill_tif(tmp_path / "hill.tif")
    bodies = _varied(24, seed=3)
    for body in bodies[::2]:  # half of them look at the hill from 2 km south, no ground given
        body.pop("ground", None)
        body["platform"] = {
            "lat": SENSOR_LAT,
            "lon": HILL_LON,
            "alt": 1400.0,
            "alt_ref": "msl",
            "heading": 0.0,
            "pitch": 0.0,
            "roll": 0.0,
        }
        body["gimbal"] = {"azimuth": 0.0, "elevation": -3.0, "roll": 0.0}
    single = _one_by_one(_pipeline(tmp_path, terrain=terrain), bodies)
    batch = _pipeline(tmp_path, terrain=terrain).prepare_many(
        [(Detection.model_validate(b), b, None) for b in bodies], now=NOW
    )
    _assert_same(single, batch)
    grounds = {p.answer["location"]["ground"] for p in batch if isinstance(p, Prepared)}
    assert "terrain" in grounds


def test_the_answer_is_the_documented_answer_model(tmp_path: Path) -> None:
    prepared = _pipeline(tmp_path).prepare(Detection.model_validate(EXAMPLE), raw=EXAMPLE, now=NOW)
    assert Answer.model_validate(prepared.answer).model_dump(mode="json") == prepared.answer


def test_agl_without_terrain_owns_up_to_the_unknown_height(tmp_path: Path) -> None:
    # The contract's shot, its platform height given above the ground (1,081 m) and no ground
    # or terrain: the position is the one the surveyed ground gives, the height is a guess on
    # 0 HAE, and the answer and the CoT event say so instead of claiming an LE90 of metres.
    surveyed = copy.deepcopy(EXAMPLE)
    blind = copy.deepcopy(EXAMPLE)
    blind.pop("ground")
    ground_hae = 1855.4 - 15.94  # MSL + EGM96 undulation there
    blind["platform"].update(alt_ref="agl", alt=round(2936.4 - 15.94 - ground_hae, 2))
    pipeline = _pipeline(tmp_path)
    known = pipeline.prepare(Detection.model_validate(surveyed), raw=surveyed, now=NOW)
    [single] = _one_by_one(pipeline, [blind])
    [batch] = pipeline.prepare_many([(Detection.model_validate(blind), blind, None)], now=NOW)
    for prepared in (single, batch):
        assert isinstance(prepared, Prepared)
        where = prepared.answer["location"]
        assert where["ground"] == "agl"
        assert where["lat"] == pytest.approx(known.answer["location"]["lat"], abs=1e-5)
        assert where["lon"] == pytest.approx(known.answer["location"]["lon"], abs=1e-5)
        assert where["le90"] > 1.6449 * 500.0
        event = parse_xml(prepared.record.cot_xml)
        assert event.le == pytest.approx(where["le90"] / 1.6449, abs=0.01)
        location = event.find("precisionlocation")
        assert location is not None
        assert location.attrs["altsrc"] == "???"
    surveyed_event = parse_xml(known.record.cot_xml).find("precisionlocation")
    assert surveyed_event is not None
    assert surveyed_event.attrs["altsrc"] == "USER"


def test_agl_over_a_requested_ground_stands_on_that_ground(tmp_path: Path) -> None:
    """1,081 m above the ground, the ground at 400 m MSL, no terrain: the platform is at
    1,481 m MSL. Before, it was put 1,081 m above 0 HAE and the ray went down to 400 m MSL from
    there: 718 m short (the flat-ground answer, from an independent pyproj reference, is
    41.1416791, -104.7816946 at a slant range of 2,292 m)."""
    agl = copy.deepcopy(EXAMPLE)
    agl["platform"].update(alt=1081.0, alt_ref="agl")
    agl["ground"] = {"height": 400.0, "height_ref": "msl"}
    msl = copy.deepcopy(agl)
    msl["platform"].update(alt=1481.0, alt_ref="msl")
    pipeline = _pipeline(tmp_path)
    [single] = _one_by_one(pipeline, [agl])
    [batch] = pipeline.prepare_many([(Detection.model_validate(agl), agl, None)], now=NOW)
    same = pipeline.prepare(Detection.model_validate(msl), raw=msl, now=NOW)
    for prepared in (single, batch):
        assert isinstance(prepared, Prepared)
        where = prepared.answer["location"]
        assert where["ground"] == "request"
        assert where["lat"] == pytest.approx(41.1416791, abs=2e-6)
        assert where["lon"] == pytest.approx(-104.7816946, abs=2e-6)
        assert where["slant_range"] == pytest.approx(2292.0, abs=2.0)
        assert where == same.answer["location"]


def test_an_unbounded_ce90_stays_unknown_in_the_cot_event(tmp_path: Path) -> None:
    # Nearly level at ~1 km: more than 10 % of the perturbed rays miss the ground, so CE90 is
    # "unknown" (9999999.0); the event must say unknown, not a 4,660 km 1-sigma circle.
    body = copy.deepcopy(EXAMPLE)
    body["gimbal"]["elevation"] = -1.2
    body["platform"].update(pitch=0.0, roll=0.0)
    body["bbox"] = {"x": 948, "y": 530, "width": 24, "height": 20}
    pipeline = _pipeline(tmp_path)
    [single] = _one_by_one(pipeline, [body])
    [batch] = pipeline.prepare_many([(Detection.model_validate(body), body, None)], now=NOW)
    for prepared in (single, batch):
        assert isinstance(prepared, Prepared)
        assert prepared.answer["location"]["ce90"] == 9999999.0
        event = parse_xml(prepared.record.cot_xml)
        assert event.ce == 9999999.0
        assert not event.ce_known
        assert "CE90 unknown" in (event.remarks or "")


def test_half_integer_pixel_centres_move_the_located_pixel_by_half_a_pixel(
    tmp_path: Path,
) -> None:
    """geolocation.md: pixel centres are at integer + 0.5 only if the client says so. Saying so
    locates exactly what the default locates for a box half a pixel right and down."""
    pipeline = _pipeline(tmp_path)
    half = copy.deepcopy(EXAMPLE)
    half["camera"]["pixel_centres"] = "half-integer"
    shifted = copy.deepcopy(EXAMPLE)
    shifted["bbox"] = {**EXAMPLE["bbox"], "x": EXAMPLE["bbox"]["x"] + 0.5}
    shifted["bbox"]["y"] = EXAMPLE["bbox"]["y"] + 0.5
    [as_given, said, moved] = _one_by_one(pipeline, [EXAMPLE, half, shifted])
    [batched] = pipeline.prepare_many([(Detection.model_validate(half), half, None)], now=NOW)
    assert isinstance(as_given, Prepared)
    assert isinstance(said, Prepared)
    assert isinstance(moved, Prepared)
    assert isinstance(batched, Prepared)
    assert said.answer["location"] == moved.answer["location"]
    assert batched.answer["location"] == said.answer["location"]
    assert said.answer["location"]["lat"] != as_given.answer["location"]["lat"]


def test_the_default_pixel_centres_leave_the_idempotency_hash_as_it_was(tmp_path: Path) -> None:
    """Detections stored before the field existed keep matching their retries: the default is
    not part of the hashed dump, and a detection spelling the default out is the same one."""
    pipeline = _pipeline(tmp_path)
    spelt = copy.deepcopy(EXAMPLE)
    spelt["camera"]["pixel_centres"] = "integer"
    half = copy.deepcopy(EXAMPLE)
    half["camera"]["pixel_centres"] = "half-integer"
    assert "pixel_centres" not in Detection.model_validate(EXAMPLE).model_dump()["camera"]
    [plain, spelt_out, other] = _one_by_one(pipeline, [EXAMPLE, spelt, half])
    assert isinstance(plain, Prepared)
    assert isinstance(spelt_out, Prepared)
    assert isinstance(other, Prepared)
    assert spelt_out.record.body_hash == plain.record.body_hash
    assert other.record.body_hash != plain.record.body_hash
    refused = copy.deepcopy(EXAMPLE)
    refused["camera"]["pixel_centres"] = "corner"
    with pytest.raises(ValueError, match="pixel_centres"):
        Detection.model_validate(refused)


@pytest.mark.parametrize(
    "label", ["man", "child", "rider", "motorbike", "pickup", "suv", "elephant", "Person ", "boat"]
)
def test_every_ground_object_is_located_where_it_touches_the_ground(
    tmp_path: Path, label: str
) -> None:
    """geolocation.md: ground objects (people, vehicles, animals) are located at the bottom-centre
    of the box. A name the CoT type mapping takes as a person or a vehicle was located at the
    box centre, 88 m away in the contract's geometry."""
    body = copy.deepcopy(EXAMPLE)
    body["label"] = label
    [prepared] = _one_by_one(_pipeline(tmp_path), [body])
    assert isinstance(prepared, Prepared)
    assert prepared.answer["location"]["point"] == "bbox-bottom-centre"


def test_the_ground_labels_hold_every_people_and_vehicle_name_of_the_type_mapping() -> None:
    from copbridge.config import DEFAULT_GROUND_LABELS
    from copbridge.cot.mapping import _DEFAULT_SYNONYMS, PEOPLE, VEHICLE, VESSEL

    names = {n for kind in (PEOPLE, VEHICLE, VESSEL) for n in _DEFAULT_SYNONYMS[kind]}
    assert names <= set(DEFAULT_GROUND_LABELS)


def test_airborne_objects_are_located_at_the_box_centre(tmp_path: Path) -> None:
    body = copy.deepcopy(EXAMPLE)
    body["label"] = "Drone"
    [prepared] = _one_by_one(_pipeline(tmp_path), [body])
    assert isinstance(prepared, Prepared)
    assert prepared.answer["location"]["point"] == "bbox-centre"


def test_the_platform_cone_reaches_as_far_as_the_image_centre_sees(tmp_path: Path) -> None:
    """The sensor's <sensor range> is the boresight's distance to the ground, not the distance
    of whichever detection sent the platform event (2292 m for the contract's off-centre box)."""
    from lxml import etree

    from copbridge import geo

    # Taken a second before NOW: a pose hours old (the example's time) shows no platform.
    taken = dict(EXAMPLE, time=(NOW - timedelta(seconds=1)).isoformat())
    [prepared] = _one_by_one(_pipeline(tmp_path), [taken])
    assert isinstance(prepared, Prepared)
    platform = prepared.record.platform_event
    assert platform is not None
    sensor = etree.fromstring(platform.payload).find("detail/sensor")
    assert sensor is not None
    detection = Detection.model_validate(taken)
    ray = _pipeline(tmp_path / "again")._ray_inputs(detection)
    hae = prepared.answer["location"]["hae"]
    centre = geo.locate_pixel(
        ray.intrinsics, ray.pose, ray.intrinsics.cx, ray.intrinsics.cy, ground_height=hae
    )
    assert float(sensor.get("range", "nan")) == pytest.approx(centre.slant_range, abs=1.0)
    assert abs(centre.slant_range - prepared.answer["location"]["slant_range"]) > 50.0
