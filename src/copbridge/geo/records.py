"""The plain records the geolocation engine takes and gives: pose, batches, fixes.

Frozen dataclasses of floats (or numpy arrays for batches) so that ``copbridge.geo`` needs
nothing from the rest of the package; the pipeline maps its pydantic models onto these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from copbridge.geo.camera import Intrinsics
from copbridge.geo.ellipsoid import FloatArray
from copbridge.geo.errors import GeolocationError
from copbridge.geo.uncertainty import (
    CE90_PER_SIGMA,
    LE90_PER_SIGMA,
    UNKNOWN_CE,
    GroundSource,
)

BoxPoint = Literal["bbox-bottom-centre", "bbox-centre"]


@dataclass(frozen=True, slots=True)
class Pose:
    """Sensor position (WGS84, height above the ellipsoid) and the ST 0601 angles in degrees.

    heading clockwise from true north, pitch + nose up, roll + right wing down; gimbal azimuth
    clockwise from the nose, elevation negative looking down, roll + clockwise seen from
    behind the camera. With platform angles 0 the gimbal angles are absolute.
    """

    lat: float
    lon: float
    hae: float
    heading: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    gimbal_azimuth: float = 0.0
    gimbal_elevation: float = 0.0
    gimbal_roll: float = 0.0

    def validate(self) -> None:
        """Raise GeolocationError naming the field if a value is not usable."""
        fields = {
            "platform.lat": self.lat,
            "platform.lon": self.lon,
            "platform.alt": self.hae,
            "platform.heading": self.heading,
            "platform.pitch": self.pitch,
            "platform.roll": self.roll,
            "gimbal.azimuth": self.gimbal_azimuth,
            "gimbal.elevation": self.gimbal_elevation,
            "gimbal.roll": self.gimbal_roll,
        }
        for name, value in fields.items():
            if not math.isfinite(value):
                raise GeolocationError(f"{name} must be finite, got {value}", field=name)
        if not -90.0 <= self.lat <= 90.0:
            raise GeolocationError(
                f"platform.lat must be within [-90, 90], got {self.lat}", field="platform.lat"
            )

    @property
    def angles(self) -> tuple[float, float, float, float, float, float]:
        """The six angles in chain order."""
        return (
            self.heading,
            self.pitch,
            self.roll,
            self.gimbal_azimuth,
            self.gimbal_elevation,
            self.gimbal_roll,
        )


def _arr(x: npt.ArrayLike) -> FloatArray:
    return np.atleast_1d(np.asarray(x, dtype=np.float64))


@dataclass(frozen=True, slots=True)
class PoseArrays:
    """A batch of poses: one array (or scalar, broadcast) per Pose field."""

    lat: FloatArray
    lon: FloatArray
    hae: FloatArray
    heading: FloatArray
    pitch: FloatArray
    roll: FloatArray
    gimbal_azimuth: FloatArray
    gimbal_elevation: FloatArray
    gimbal_roll: FloatArray

    @classmethod
    def of(
        cls,
        lat: npt.ArrayLike,
        lon: npt.ArrayLike,
        hae: npt.ArrayLike,
        heading: npt.ArrayLike = 0.0,
        pitch: npt.ArrayLike = 0.0,
        roll: npt.ArrayLike = 0.0,
        gimbal_azimuth: npt.ArrayLike = 0.0,
        gimbal_elevation: npt.ArrayLike = 0.0,
        gimbal_roll: npt.ArrayLike = 0.0,
    ) -> PoseArrays:
        """Build from array-likes (converted to float64 arrays)."""
        return cls(
            _arr(lat),
            _arr(lon),
            _arr(hae),
            _arr(heading),
            _arr(pitch),
            _arr(roll),
            _arr(gimbal_azimuth),
            _arr(gimbal_elevation),
            _arr(gimbal_roll),
        )

    @classmethod
    def from_poses(cls, poses: list[Pose] | tuple[Pose, ...]) -> PoseArrays:
        """Stack scalar poses."""
        cols = np.array(
            [(p.lat, p.lon, p.hae, *p.angles) for p in poses], dtype=np.float64
        ).reshape(-1, 9)
        return cls(*(cols[:, i].copy() for i in range(9)))

    @classmethod
    def from_pose(cls, pose: Pose) -> PoseArrays:
        """A one-element batch (broadcast against the other inputs)."""
        return cls.from_poses([pose])


@dataclass(frozen=True, slots=True)
class CameraArrays:
    """A batch of intrinsics: focal lengths, principal point and distortion, per ray or scalar."""

    fx: FloatArray
    fy: FloatArray
    cx: FloatArray
    cy: FloatArray
    k1: FloatArray
    k2: FloatArray
    p1: FloatArray
    p2: FloatArray
    k3: FloatArray

    @classmethod
    def of(
        cls,
        fx: npt.ArrayLike,
        fy: npt.ArrayLike,
        cx: npt.ArrayLike,
        cy: npt.ArrayLike,
        k1: npt.ArrayLike = 0.0,
        k2: npt.ArrayLike = 0.0,
        p1: npt.ArrayLike = 0.0,
        p2: npt.ArrayLike = 0.0,
        k3: npt.ArrayLike = 0.0,
    ) -> CameraArrays:
        """Build from array-likes (converted to float64 arrays)."""
        return cls(
            _arr(fx), _arr(fy), _arr(cx), _arr(cy), _arr(k1), _arr(k2), _arr(p1), _arr(p2), _arr(k3)
        )

    @classmethod
    def from_intrinsics(cls, cams: list[Intrinsics] | tuple[Intrinsics, ...]) -> CameraArrays:
        """Stack scalar intrinsics."""
        cols = np.array(
            [(c.fx, c.fy, c.cx, c.cy, *c.distortion) for c in cams], dtype=np.float64
        ).reshape(-1, 9)
        return cls(*(cols[:, i].copy() for i in range(9)))

    @property
    def has_distortion(self) -> bool:
        """True when any ray has a non-zero distortion coefficient."""
        return bool(any(np.any(k != 0.0) for k in (self.k1, self.k2, self.p1, self.p2, self.k3)))


@dataclass(frozen=True, slots=True)
class Fix:
    """One geolocated point: WGS84 lat/lon (deg), HAE (m), CE90/LE90 (m), slant range (m).

    ``ground`` says which surface the ray was intersected with (spec order: request, terrain,
    agl, ellipsoid); ``sampled`` whether CE90 came from Monte Carlo (grazing view) rather than
    linearisation. ce90/le90 equal UNKNOWN_CE when no bound could be given.
    """

    lat: float
    lon: float
    hae: float
    ce90: float
    le90: float
    slant_range: float
    ground: GroundSource
    sampled: bool = False
    height_absolute: bool = True
    """False when ``hae`` rests on an assumed ground at 0 HAE (platform height given above the
    ground, no terrain model under it): the horizontal position holds, the height is a guess
    whose LE90 says so."""

    @property
    def ce(self) -> float:
        """CoT ``ce``: 1-sigma circular error, CE90 / 2.1460 (9999999.0 when unknown)."""
        return UNKNOWN_CE if self.ce90 >= UNKNOWN_CE else self.ce90 / CE90_PER_SIGMA

    @property
    def le(self) -> float:
        """CoT ``le``: 1-sigma vertical error, LE90 / 1.6449 (9999999.0 when unknown)."""
        return UNKNOWN_CE if self.le90 >= UNKNOWN_CE else self.le90 / LE90_PER_SIGMA


def box_point(
    x: float, y: float, w: float, h: float, ground_object: bool
) -> tuple[float, float, BoxPoint]:
    """The pixel to locate for a box (origin top-left): bottom-centre for ground objects
    (people, vehicles, animals: where they touch the ground), the centre otherwise."""
    if ground_object:
        return x + w / 2.0, y + h, "bbox-bottom-centre"
    return x + w / 2.0, y + h / 2.0, "bbox-centre"
