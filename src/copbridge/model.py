"""The contract types of the Detection API v1 (``shared/spec/detection-api.md``).

Strict: unknown fields, non-finite numbers and out-of-range values are refused with a message
that names the field, so a misspelt field never silently becomes a default.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_serializer,
    field_validator,
    model_validator,
)

from copbridge.cot import format_time

_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False, str_strip_whitespace=False)

IdText = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"


def _no_nul(value: str) -> str:
    # NUL ends strings in C, cannot be stored in PostgreSQL text and is not an XML character:
    # refused with a clear error rather than kept by one store and refused by another.
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\u0000) characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be Unicode text (it holds a lone surrogate)") from None
    return value


#: Free text (labels, callsigns, model names): any Unicode but NUL, escaped wherever written.
FreeText = Annotated[str, AfterValidator(_no_nul)]


# The length check before the NUL check: after it, pydantic words a too-long string as a
# sequence ("at most 64 items after validation"), not as "at most 64 characters".
Callsign = Annotated[str, StringConstraints(max_length=64), AfterValidator(_no_nul)]
ModelName = Annotated[str, StringConstraints(max_length=128), AfterValidator(_no_nul)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(_no_nul)]


SensorId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]
Affiliation = Literal[
    "unknown", "pending", "assumed-friend", "friend", "neutral", "suspect", "hostile"
]
GroundKind = Literal["request", "terrain", "agl", "ellipsoid"]
BoxPoint = Literal["bbox-bottom-centre", "bbox-centre"]
ImageType = Literal["image/jpeg", "image/png"]
PixelCentres = Literal["integer", "half-integer"]

MAX_PIXELS = 100_000
MAX_FOCAL_PX = 1e7
EARLIEST_TIME = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TIME = datetime(2100, 1, 1, tzinfo=UTC)
"""Detection times outside these bounds are refused: stale times and CoT's millisecond times
are computed from them, and a year-9999 frame would overflow them (a 500 before this bound)."""
_FIELD_NAME = re.compile(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*")
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def _rfc3339(value: Any) -> Any:
    # pydantic would take 2026 or "20261128" as Unix seconds (1970-01-01T00:33:46Z): a
    # timestamp in another format must be refused, not silently moved by decades.
    if not isinstance(value, str) or _RFC3339.fullmatch(value) is None:
        raise ValueError("must be an RFC 3339 date-time with offset, e.g. 2026-11-28T03:51:20Z")
    return value


#: A date-time written as RFC 3339 text with an offset; numbers and other formats are refused.
Rfc3339Time = Annotated[AwareDatetime, BeforeValidator(_rfc3339)]


class _Strict(BaseModel):
    model_config = _STRICT


class Sensor(_Strict):
    id: SensorId
    callsign: Callsign | None = None
    model: ModelName | None = None


class BBox(_Strict):
    """Pixels, origin top-left, x right, y down."""

    x: float = Field(strict=True, ge=0, le=MAX_PIXELS)
    y: float = Field(strict=True, ge=0, le=MAX_PIXELS)
    width: float = Field(strict=True, gt=0, le=MAX_PIXELS)
    height: float = Field(strict=True, gt=0, le=MAX_PIXELS)


class Distortion(_Strict):
    """OpenCV Brown-Conrady coefficients."""

    k1: float = Field(strict=True, default=0.0, ge=-100, le=100)
    k2: float = Field(strict=True, default=0.0, ge=-100, le=100)
    p1: float = Field(strict=True, default=0.0, ge=-1, le=1)
    p2: float = Field(strict=True, default=0.0, ge=-1, le=1)
    k3: float = Field(strict=True, default=0.0, ge=-100, le=100)


def _json_number(value: Any) -> Any:
    # A lax int takes "1920", " 1920 ", "1_920" and true (as 1 px); floats are strict already.
    if isinstance(value, bool | str):
        raise ValueError("must be a whole number (a JSON number, not text or true/false)")  # noqa: TRY004  # pydantic reports ValueError, not TypeError
    return value


#: An image side in pixels: a JSON number with no fraction (1920 or 1920.0).
PixelCount = Annotated[int, BeforeValidator(_json_number), Field(gt=0, le=MAX_PIXELS)]


class Camera(_Strict):
    width: PixelCount
    height: PixelCount
    hfov: float | None = Field(strict=True, default=None, gt=0, lt=180)
    vfov: float | None = Field(strict=True, default=None, gt=0, lt=180)
    fx: float | None = Field(strict=True, default=None, gt=0, le=MAX_FOCAL_PX)
    fy: float | None = Field(strict=True, default=None, gt=0, le=MAX_FOCAL_PX)
    cx: float | None = Field(strict=True, default=None, ge=-MAX_PIXELS, le=2 * MAX_PIXELS)
    cy: float | None = Field(strict=True, default=None, ge=-MAX_PIXELS, le=2 * MAX_PIXELS)
    distortion: Distortion | None = None
    #: Where pixel centres lie (an addition to the contract, geolocation.md "Pixel centres are at
    #: integer + 0.5 only if the client says so"): "integer" (the default) takes (u, v) as given;
    #: "half-integer" adds 0.5 px to both before the ray is formed. Left out of dumps while it is
    #: the default, so the idempotency hash of every detection that does not use it is unchanged.
    pixel_centres: PixelCentres = Field(default="integer", exclude_if=lambda v: v == "integer")

    @model_validator(mode="after")
    def _focal_given(self) -> Camera:
        if self.hfov is None and self.fx is None:
            raise ValueError("camera needs hfov or fx")
        # Both ways of giving a focal length meet the same bounds, so neither smuggles in one the
        # geometry cannot represent: a subnormal hfov or fx overflows 1/f to infinity (a 500).
        for fov_name, fov, focal_name, focal, pixels in (
            ("hfov", self.hfov, "fx", self.fx, self.width),
            ("vfov", self.vfov, "fy", self.fy, self.height),
        ):
            # focal = pixels / 2 / tan(fov / 2), compared without dividing: tan may underflow to 0
            if fov is not None and math.tan(math.radians(fov) / 2) * MAX_FOCAL_PX < pixels / 2:
                raise ValueError(
                    f"{fov_name} {fov:g}° is too narrow for {pixels} pixels: the focal length "
                    f"would exceed {MAX_FOCAL_PX:g} px"
                )
            if focal is not None and 2 * math.degrees(math.atan2(pixels, 2 * focal)) >= 180:
                raise ValueError(
                    f"{focal_name} {focal:g} px is too short for {pixels} pixels: the field of "
                    "view would reach 180°"
                )
        return self


class Platform(_Strict):
    """Sensor position (WGS84) and platform attitude: MISB ST 0601 tags 13/14/15 and 5/6/7."""

    lat: float = Field(strict=True, ge=-90, le=90)
    lon: float = Field(strict=True, ge=-180, le=180)
    alt: float = Field(strict=True, ge=-1000, le=100_000)
    alt_ref: Literal["hae", "msl", "agl"] = "hae"
    # Required, unlike the gimbal's: a detector that lost its attitude reading must not have it
    # read as 0° (a heading left out moved the example's point by 4 km). A fixed camera sends
    # 0, 0, 0 and its absolute angles on the gimbal.
    heading: float = Field(strict=True, ge=-360, le=360)
    pitch: float = Field(strict=True, ge=-90, le=90)
    roll: float = Field(strict=True, ge=-180, le=180)


class Gimbal(_Strict):
    """Sensor attitude relative to the platform: MISB ST 0601 tags 18/19/20."""

    azimuth: float = Field(strict=True, default=0.0, ge=-360, le=360)
    elevation: float = Field(strict=True, default=0.0, ge=-180, le=180)
    roll: float = Field(strict=True, default=0.0, ge=-180, le=180)


class Ground(_Strict):
    height: float = Field(strict=True, ge=-1000, le=10_000)
    height_ref: Literal["hae", "msl"] = "hae"


class Uncertainty(_Strict):
    """1-sigma input errors; anything left out takes the server's documented default."""

    horizontal_m: float | None = Field(strict=True, default=None, ge=0, le=100_000)
    vertical_m: float | None = Field(strict=True, default=None, ge=0, le=100_000)
    attitude_deg: float | None = Field(strict=True, default=None, ge=0, le=45)
    focal_rel: float | None = Field(strict=True, default=None, ge=0, le=0.5)
    ground_m: float | None = Field(strict=True, default=None, ge=0, le=10_000)


class InlineImage(_Strict):
    media_type: ImageType
    data: str = Field(max_length=20 * 1024 * 1024)

    def decoded(self) -> bytes:
        try:
            return base64.b64decode(self.data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"image.data is not valid base64: {exc}") from None


class Detection(_Strict):
    """One detection: a box in an image plus the camera's intrinsics and pose at capture time."""

    id: IdText | None = None
    time: Rfc3339Time
    sensor: Sensor
    label: Label
    confidence: float = Field(strict=True, ge=0, le=1)
    bbox: BBox
    track_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,64}$")] | None = None
    affiliation: Affiliation = "unknown"
    camera: Camera
    platform: Platform
    gimbal: Gimbal = Field(default_factory=Gimbal)
    ground: Ground | None = None
    uncertainty: Uncertainty | None = None
    image: InlineImage | None = None

    @field_validator("track_id", mode="before")
    @classmethod
    def _track_number(cls, value: Any) -> Any:
        # Trackers often emit integers; they name the same track as their decimal string.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator("time")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        try:
            utc = value.astimezone(UTC)
        except OverflowError:  # 0001-01-01T00:00:00+14:00 is before year 1 in UTC
            utc = None
        if utc is None or not EARLIEST_TIME <= utc < LATEST_TIME:
            raise ValueError(
                f"must lie between {EARLIEST_TIME:%Y-%m-%d} and {LATEST_TIME:%Y-%m-%d} (UTC)"
            )
        return utc

    @model_validator(mode="after")
    def _box_inside_image(self) -> Detection:
        box, cam = self.bbox, self.camera
        if box.x + box.width > cam.width or box.y + box.height > cam.height:
            raise ValueError(
                f"bbox must lie inside the {cam.width}x{cam.height} image: it reaches "
                f"x={box.x + box.width:g}, y={box.y + box.height:g}"
            )
        return self


class Location(BaseModel):
    lat: float
    lon: float
    hae: float
    ce90: float
    le90: float
    slant_range: float
    ground: GroundKind
    point: BoxPoint


class Answer(BaseModel):
    """The 202 answer: stored, will be delivered to every configured destination."""

    id: str
    uid: str
    status: Literal["queued"] = "queued"
    location: Location
    cot_type: str
    stale: datetime
    duplicate: bool = False
    warnings: list[str] | None = Field(default=None, exclude_if=lambda value: value is None)
    """Present when the detection is stored but something will keep it off the maps: today,
    a stale time already past on arrival (the detector's clock behind, or old data sent
    again), so it will expire without being delivered."""

    @field_serializer("stale")
    def _stale_text(self, value: datetime) -> str:
        return format_time(value)  # UTC, milliseconds, Z: as the CoT event writes it


class BatchItemResult(BaseModel):
    index: int
    status: int
    answer: Answer | None = None
    #: A refused item's error has the shape of a refused single detection's body: ``detail``
    #: and ``errors`` ([{field, message}], fields named in the batch: ``detections[3].time``);
    #: a 503 has no field, and one whose commit was cut off adds ``"stored": "unknown"``.
    error: dict[str, Any] | None = None


class BatchAnswer(BaseModel):
    accepted: int
    duplicates: int
    rejected: int
    results: list[BatchItemResult]


_LONGEST_NAME = 64
"""Longer than any field of ours: an unknown key beyond this is named by its start."""


def _named(part: object) -> str:
    text = str(part)
    return text if len(text) <= _LONGEST_NAME else f"{text[:_LONGEST_NAME]}…"


def field_errors(errors: Iterable[Any], prefix: str = "") -> list[dict[str, str]]:
    """Pydantic errors as ``field`` (dotted path) + ``message``; root errors name their field."""
    out = []
    for error in errors:
        loc = [_named(p) for p in error.get("loc", ()) if p not in ("body",)]
        message = str(error.get("msg", "invalid"))
        message = message.removeprefix("Value error, ")
        if "input" in error and error["input"] is None and error.get("type") != "missing":
            # null is not "left out": a missing gimbal or roll read as 0 would move the point
            message = f"{message}, not null (leave an optional field out to get its default)"
        if error.get("type") == "json_invalid":
            field = "body"
            message = f"not valid JSON: {error.get('ctx', {}).get('error', message)}"
        elif loc:
            field = ".".join(loc)
        else:  # a model-level check names its field first; else the value as a whole is wrong
            first = message.split(" ", 1)[0]
            field = first if _FIELD_NAME.fullmatch(first) else "body"
        if prefix:
            field = f"{prefix}.{field}" if field != "body" else prefix
        out.append({"field": field, "message": f"{field}: {message}"})
    return out


def errors_detail(errors: Sequence[dict[str, str]]) -> str:
    """The one-line ``detail`` of field errors: their first five messages."""
    return "; ".join(e["message"] for e in errors[:5])
