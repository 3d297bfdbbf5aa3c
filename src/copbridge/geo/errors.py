"""Errors raised by the geolocation engine.

One exception type, a ``ValueError``, so the API can map every geometry problem to a 422 with a
message that names the field or the angle at fault.
"""

from __future__ import annotations

import math
from enum import IntEnum

MIN_CLEARANCE_M = 0.1
"""How far above the ground surface the sensor must be: at the surface itself the ray meets it
at the camera, whatever the box (a fix there would be the camera's own position)."""


class RayStatus(IntEnum):
    """Outcome of one ray in the vectorised API (``Fixes.status``)."""

    OK = 0
    ABOVE_HORIZON = 1  # the line of sight points at or above the local horizon
    MISSES_SURFACE = 2  # below the horizon, but passes over the curved surface (high altitude)
    SENSOR_BELOW_SURFACE = 3  # the sensor is below, or on, the surface it should look down on
    UNDISTORTION_FAILED = 4  # Brown-Conrady inverse did not converge / pixel beyond the fold
    INVALID_INPUT = 5  # a non-finite number reached the maths


class GeolocationError(ValueError):
    """The geometry cannot give a ground point, or an input is inconsistent.

    ``field`` names the request field at fault when there is one (``camera.hfov``), ``status``
    the kind of ray failure when the line of sight is the problem.
    """

    def __init__(
        self, message: str, *, field: str | None = None, status: RayStatus | None = None
    ) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


def ray_error(
    status: RayStatus, elevation_deg: float, height_above_ground_m: float
) -> GeolocationError:
    """The error for a failed ray, naming the line-of-sight elevation angle."""
    prefix = "line of sight does not meet the ground: "
    if status is RayStatus.ABOVE_HORIZON:
        if elevation_deg <= 0.05:
            msg = "it points at the horizon"
        else:
            msg = f"it points {elevation_deg:.1f}° above the horizon"
        return GeolocationError(prefix + msg, status=status)
    if status is RayStatus.MISSES_SURFACE:
        dip = _horizon_dip_deg(height_above_ground_m)
        return GeolocationError(
            prefix + f"it points {-elevation_deg:.1f}° below the horizon, above the "
            f"{dip:.1f}° dip of the horizon seen from {height_above_ground_m:.0f} m above the "
            "ground",
            status=status,
        )
    if status is RayStatus.SENSOR_BELOW_SURFACE:
        if height_above_ground_m >= 0.0:
            where = (
                f"only {height_above_ground_m:.2f} m above the ground height it should look down "
                f"on (at least {MIN_CLEARANCE_M:g} m: from the ground itself every box would "
                "land on the camera)"
            )
        else:
            where = f"{-height_above_ground_m:.1f} m below the ground height it should look down on"
        return GeolocationError(
            f"the sensor is {where} (check platform.alt and ground.height and their references)",
            status=status,
        )
    if status is RayStatus.UNDISTORTION_FAILED:
        return GeolocationError(
            "lens undistortion did not converge for this pixel: the distortion coefficients "
            "fold the image there (check camera.distortion)",
            field="camera.distortion",
            status=status,
        )
    return GeolocationError("non-finite input reached the geolocation", status=status)


def _horizon_dip_deg(height_m: float) -> float:
    r = 6371000.0
    h = max(height_m, 0.0)
    return math.degrees(math.acos(r / (r + h)))
