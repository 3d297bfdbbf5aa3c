"""The facts of a CoT event: a detection's marker, its sensor's platform marker, the keepalive.

Frozen dataclasses validated at construction (finite numbers, ranges, UTC times to the
millisecond) plus the builders that derive uid, type, callsign, ce/le and stale from a detection.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from copbridge.cot.mapping import DEFAULT_TYPE_MAPPING, Affiliation, TypeMapping, cot_type
from copbridge.cot.text import clean_text
from copbridge.cot.timing import DEFAULT_STALE_POLICY, StalePolicy
from copbridge.cot.uids import DEFAULT_UID_PREFIX, detection_uid, platform_uid

UNKNOWN_ERROR = 9999999.0
"""CoT's "unknown" for `ce`/`le`."""

CE90_PER_SIGMA = 2.1460
"""CE90 = 2.1460 sigma for a circular normal error (geolocation.md)."""
LE90_PER_SIGMA = 1.6449
"""LE90 = 1.6449 sigma for a normal vertical error."""

PLATFORM_TYPE_AIRBORNE = "a-f-A-M-F-Q"
PLATFORM_TYPE_FIXED = "a-f-G-E-S"
HOW_DETECTION = "m-i"  # machine, imagery
HOW_PLATFORM = "m-g"  # machine, GPS-derived
HOW_PING = "h-g-i-g-o"  # what ATAK sends with its own pings
PING_TYPE = "t-x-c-t"

# ATAK GeoPointMetaData source names for <precisionlocation>.
SOURCE_CALCULATED = "CALC"
SOURCE_GPS = "GPS"
SOURCE_USER = "USER"
SOURCE_UNKNOWN = "???"

# base-event-schema.xsd: type `\w+(-\w+)*(;[^;]*)?`, how `\w(-\w+)*`. XSD's `\w` excludes
# punctuation (so "_" too) but takes non-ASCII letters that TAK clients mishandle: ASCII only.
_TYPE = re.compile(r"[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*")
_HOW = re.compile(r"[A-Za-z0-9](?:-[A-Za-z0-9]+)*")


def _finite(value: float, what: str) -> float:
    if type(value) is float and math.isfinite(value):  # the common case, checked cheaply
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return float(value)


def _in_range(value: float, low: float, high: float, what: str) -> float:
    value = _finite(value, what)
    if not low <= value <= high:
        raise ValueError(f"{what} must be in [{low}, {high}], got {value!r}")
    return value


def _optional_error(value: float | None, what: str) -> float | None:
    if value is None:
        return None
    value = _finite(value, what)
    if value < 0:
        raise ValueError(f"{what} must not be negative, got {value!r}")
    return value


def _known_error(value: float | None, what: str) -> float | None:
    """A 90 % error in metres, None when unknown: geolocation gives UNKNOWN_ERROR when it has
    no bound, and that must stay "unknown" in CoT, not become a 4,660 km 1-sigma."""
    value = _optional_error(value, what)
    return None if value is None or value >= UNKNOWN_ERROR else value


def _degrees_0_360(value: float, what: str) -> float:
    """Normalise an angle to [0, 360); -0.0 and float rounding at 360 both become 0."""
    value = _finite(value, what) % 360.0
    return 0.0 if value >= 360.0 or value == 0.0 else value


def _utc_ms(value: datetime, what: str) -> datetime:
    """UTC, truncated to the millisecond: the precision TAK keeps (protobuf carries ms)."""
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is UTC and not value.microsecond % 1000:  # already normalised
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware (UTC), got naive {value.isoformat()}")
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond - value.microsecond % 1000)


def _check_type(value: str, what: str = "type") -> str:
    if value not in _GOOD_TYPES:
        if not _TYPE.fullmatch(value):
            raise ValueError(f"CoT {what} {value!r} does not match the CoT type grammar")
        if len(_GOOD_TYPES) < _GOOD_TYPES_MAX:  # a handful of types repeat on every event
            _GOOD_TYPES.add(value)
    return value


_GOOD_TYPES: set[str] = set()
_GOOD_TYPES_MAX = 1024


def _check_uid(value: str, what: str = "uid") -> str:
    if not isinstance(value, str) or not value.strip() or not clean_text(value).strip():
        raise ValueError(f"{what} must be a non-empty string")
    return value


def _times(time: datetime, start: datetime, stale: datetime) -> tuple[datetime, ...]:
    checked = (_utc_ms(time, "time"), _utc_ms(start, "start"), _utc_ms(stale, "stale"))
    if not checked[2] > checked[1]:
        raise ValueError("stale must be after start")
    return checked


def _point(
    lat: float, lon: float, hae: float, ce: float | None, le: float | None
) -> tuple[float | None, ...]:
    return (
        _in_range(lat, -90.0, 90.0, "lat"),
        _in_range(lon, -180.0, 180.0, "lon"),
        _finite(hae, "hae"),
        _optional_error(ce, "ce"),
        _optional_error(le, "le"),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class _Marker:
    """What every marker event has: identity, type, times and a point (validated once, here)."""

    uid: str
    type: str
    how: str
    time: datetime
    start: datetime
    stale: datetime
    lat: float
    lon: float
    hae: float
    ce: float | None
    le: float | None
    callsign: str
    sensor_id: str
    course: float | None = None
    speed: float | None = None

    def _check_marker(self) -> None:
        _check_uid(self.uid)
        _check_type(self.type)
        if not _HOW.fullmatch(self.how):
            raise ValueError(f"CoT how {self.how!r} does not match the CoT how grammar")
        setattr_ = object.__setattr__  # frozen: validated values are assigned this way
        time, start, stale = _times(self.time, self.start, self.stale)
        setattr_(self, "time", time)
        setattr_(self, "start", start)
        setattr_(self, "stale", stale)
        lat, lon, hae, ce, le = _point(self.lat, self.lon, self.hae, self.ce, self.le)
        setattr_(self, "lat", lat)
        setattr_(self, "lon", lon)
        setattr_(self, "hae", hae)
        setattr_(self, "ce", ce)
        setattr_(self, "le", le)
        if self.course is not None:
            object.__setattr__(self, "course", _degrees_0_360(self.course, "course"))
        object.__setattr__(self, "speed", _optional_error(self.speed, "speed"))


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectionEvent(_Marker):
    """A located detection as a CoT marker. `ce`/`le` are 1-sigma metres, None = unknown."""

    label: str
    confidence: float
    parent_uid: str
    parent_type: str
    how: str = HOW_DETECTION
    detection_id: str | None = None
    model: str | None = None
    sensor_callsign: str | None = None
    track_id: str | None = None
    ce90: float | None = None
    le90: float | None = None
    image_url: str | None = None
    image_mime: str | None = None
    geopoint_source: str | None = SOURCE_CALCULATED
    alt_source: str | None = SOURCE_CALCULATED

    def __post_init__(self) -> None:
        self._check_marker()
        _check_uid(self.parent_uid, "parent uid")
        _check_type(self.parent_type, "parent type")
        object.__setattr__(self, "confidence", _in_range(self.confidence, 0.0, 1.0, "confidence"))
        object.__setattr__(self, "ce90", _optional_error(self.ce90, "ce90"))
        object.__setattr__(self, "le90", _optional_error(self.le90, "le90"))
        if self.image_mime is not None and self.image_url is None:
            raise ValueError("image_mime given without image_url")

    @property
    def detection_time(self) -> datetime:
        """When the frame was captured (the event's `start`)."""
        return self.start

    @property
    def remarks(self) -> str:
        """One line for the marker's remarks: what, how sure, who saw it, when, how well."""
        parts = [f"{self.label}, confidence {self.confidence:.2f}"]
        if self.model:
            parts.append(f"model {self.model}")
        sensor = self.sensor_id
        if self.sensor_callsign:
            sensor = f"{self.sensor_callsign} ({self.sensor_id})"
        parts.append(f"sensor {sensor}")
        if self.track_id:
            parts.append(f"track {self.track_id}")
        parts.append(f"detected {format_time(self.start)}")
        parts.append(f"CE90 {self.ce90:.1f} m" if self.ce90 is not None else "CE90 unknown")
        if self.le90 is not None:
            parts.append(f"LE90 {self.le90:.1f} m")
        return "; ".join(parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class PlatformEvent(_Marker):
    """The sensor's own marker, with the `<sensor>` detail ATAK draws as a field-of-view cone.

    Angles in degrees: `azimuth` absolute, clockwise from true north, [0, 360); `elevation`
    [-90, 90], negative looking down; `fov`/`vfov` edge to edge, (0, 360); `range` slant range in
    metres. ATAK draws the cone only when azimuth, fov and range are all present.
    """

    how: str = HOW_PLATFORM
    azimuth: float | None = None
    elevation: float | None = None
    roll: float | None = None
    fov: float | None = None
    vfov: float | None = None
    range: float | None = None
    sensor_model: str | None = None
    remarks: str | None = None

    def __post_init__(self) -> None:
        self._check_marker()
        if self.azimuth is not None:
            object.__setattr__(self, "azimuth", _degrees_0_360(self.azimuth, "azimuth"))
        if self.elevation is not None:
            object.__setattr__(
                self, "elevation", _in_range(self.elevation, -90.0, 90.0, "elevation")
            )
        if self.roll is not None:
            # sensor-schema.xsd: roll in (-180, 180]
            roll = _finite(self.roll, "roll")
            if not -180.0 < roll <= 180.0:  # in range: kept as given, without float noise
                roll = 180.0 - _degrees_0_360(180.0 - roll, "roll")
            object.__setattr__(self, "roll", roll)
        for name in ("fov", "vfov"):
            value = getattr(self, name)
            if value is not None:
                if not 0.0 < _finite(value, name) < 360.0:
                    raise ValueError(f"{name} must be in (0, 360), got {value!r}")
                object.__setattr__(self, name, float(value))
        object.__setattr__(self, "range", _optional_error(self.range, "range"))

    @property
    def draws_fov(self) -> bool:
        """True when ATAK has what it needs to draw the field-of-view cone."""
        return None not in (self.azimuth, self.fov, self.range)


@dataclass(frozen=True, slots=True, kw_only=True)
class PingEvent:
    """The `t-x-c-t` keepalive a TAK server answers with a pong."""

    uid: str
    time: datetime
    stale: datetime
    type: str = PING_TYPE
    how: str = HOW_PING

    def __post_init__(self) -> None:
        _check_uid(self.uid)
        _check_type(self.type)
        object.__setattr__(self, "time", _utc_ms(self.time, "time"))
        object.__setattr__(self, "stale", _utc_ms(self.stale, "stale"))
        if not self.stale > self.time:
            raise ValueError("stale must be after time")

    @property
    def start(self) -> datetime:
        return self.time


CotEvent = DetectionEvent | PlatformEvent | PingEvent


@functools.lru_cache(maxsize=4096)
def format_time(value: datetime) -> str:
    """xs:dateTime in UTC with milliseconds, as TAK writes it: 2026-11-28T03:51:20.123Z.

    Cached: one event writes its times two or three times (head, remarks, flow tags, the API's
    answer) and every event of a batch shares `now`."""
    if value.tzinfo is not UTC and value.tzinfo is not None and value.utcoffset():
        value = value.astimezone(UTC)
    # isoformat is C code; its first 23 characters are the date and time to the millisecond.
    return value.isoformat(timespec="milliseconds")[:23] + "Z"


def _short_id(track_id: str | None, detection_id: str) -> str:
    ident = clean_text(track_id or detection_id).strip()
    return ident if len(ident) <= 8 else ident[-6:]


def build_detection_event(
    *,
    now: datetime,
    detection_id: str,
    detection_time: datetime,
    sensor_id: str,
    label: str,
    confidence: float,
    lat: float,
    lon: float,
    hae: float,
    ce90: float | None,
    le90: float | None,
    sensor_callsign: str | None = None,
    model: str | None = None,
    track_id: str | None = None,
    affiliation: Affiliation | str = Affiliation.UNKNOWN,
    mapping: TypeMapping = DEFAULT_TYPE_MAPPING,
    stale_policy: StalePolicy = DEFAULT_STALE_POLICY,
    uid_prefix: str = DEFAULT_UID_PREFIX,
    parent_type: str = PLATFORM_TYPE_AIRBORNE,
    course: float | None = None,
    speed: float | None = None,
    image_url: str | None = None,
    image_mime: str | None = None,
    geopoint_source: str | None = SOURCE_CALCULATED,
    alt_source: str | None = SOURCE_CALCULATED,
) -> DetectionEvent:
    """A detection's marker: uid per sensor track, type from label x affiliation, time = `now`,
    start = detection time, stale from the policy, ce/le = CE90/2.1460, LE90/1.6449 (1-sigma,
    to the millimetre; unknown when the 90 % figure is None or UNKNOWN_ERROR).
    """
    start = _utc_ms(detection_time, "detection time")
    ce90 = _known_error(ce90, "ce90")
    le90 = _known_error(le90, "le90")
    ce = None if ce90 is None else round(ce90 / CE90_PER_SIGMA, 3)
    le = None if le90 is None else round(le90 / LE90_PER_SIGMA, 3)
    short = _short_id(track_id, detection_id)
    name = clean_text(label).strip() or "detection"
    return DetectionEvent(
        uid=detection_uid(uid_prefix, sensor_id, track_id, detection_id),
        type=cot_type(label, affiliation, mapping),
        time=now,
        start=start,
        stale=stale_policy.stale_after(label, start),
        lat=lat,
        lon=lon,
        hae=hae,
        ce=ce,
        le=le,
        callsign=f"{name} {short}" if short else name,
        label=label,
        confidence=confidence,
        sensor_id=sensor_id,
        parent_uid=platform_uid(uid_prefix, sensor_id),
        parent_type=parent_type,
        detection_id=detection_id,
        model=model,
        sensor_callsign=sensor_callsign,
        track_id=track_id or None,
        ce90=ce90,
        le90=le90,
        course=course,
        speed=speed,
        image_url=image_url,
        image_mime=image_mime,
        geopoint_source=geopoint_source,
        alt_source=alt_source,
    )


def build_platform_event(
    *,
    now: datetime,
    sensor_id: str,
    lat: float,
    lon: float,
    hae: float,
    ce: float | None = None,
    le: float | None = None,
    callsign: str | None = None,
    airborne: bool = True,
    platform_type: str | None = None,
    uid_prefix: str = DEFAULT_UID_PREFIX,
    azimuth: float | None = None,
    elevation: float = 0.0,
    roll: float | None = None,
    fov: float | None = None,
    vfov: float | None = None,
    range_m: float | None = None,
    sensor_model: str | None = None,
    course: float | None = None,
    speed: float | None = None,
    stale_seconds: float = 120.0,
    pose_time: datetime | None = None,
) -> PlatformEvent:
    """The sensor's own marker, made at `now`, of its pose at `pose_time` (its start; default
    `now`), stale `stale_seconds` after `now`; `ce`/`le` 1-sigma of the platform position.

    `elevation` defaults to 0 rather than None because ATAK turns the slant `range` into a
    ground range with cos(elevation) and draws no cone when elevation is missing.
    """
    start = now if pose_time is None else pose_time
    return PlatformEvent(
        uid=platform_uid(uid_prefix, sensor_id),
        type=platform_type or (PLATFORM_TYPE_AIRBORNE if airborne else PLATFORM_TYPE_FIXED),
        time=now,
        start=start,
        stale=now + timedelta(seconds=_finite(stale_seconds, "stale seconds")),
        lat=lat,
        lon=lon,
        hae=hae,
        ce=ce,
        le=le,
        callsign=callsign or sensor_id,
        sensor_id=sensor_id,
        azimuth=azimuth,
        elevation=elevation,
        roll=roll,
        fov=fov,
        vfov=vfov,
        range=range_m,
        sensor_model=sensor_model,
        course=course,
        speed=speed,
        remarks=f"copbridge sensor {callsign or sensor_id} ({sensor_id})",
    )


def ping_event(
    now: datetime, uid: str = "copbridge-ping", stale_seconds: float = 20.0
) -> PingEvent:
    """The `t-x-c-t` keepalive; TAK servers answer it and keep the connection open."""
    return PingEvent(uid=uid, time=now, stale=now + timedelta(seconds=stale_seconds))
