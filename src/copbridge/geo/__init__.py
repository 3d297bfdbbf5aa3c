"""Geolocation: from a pixel, camera intrinsics and MISB ST 0601 pose to a WGS84 point + CE/LE.

Pure numpy (plus rasterio for GeoTIFF terrain); imports nothing from the rest of copbridge.
Geometry is hand-written so one vectorised pass gives both the point and its analytic Jacobian,
and so the angle conventions are exactly MISB ST 0601's (see ``shared/spec/geolocation.md``).

Entry points: ``locate_pixel`` (one detection, ground chosen in the spec's order), ``locate``
(vectorised batch), ``project`` (forward model), ``box_point``, ``load_egm96``, terrain models.
"""

from copbridge.geo.camera import Intrinsics
from copbridge.geo.errors import GeolocationError, RayStatus
from copbridge.geo.geoid import Geoid, load_egm96
from copbridge.geo.locate import (
    Fixes,
    PlatformHeight,
    locate,
    locate_pixel,
    project,
    ray_ned,
    relative_height,
    resolve_platform_hae,
)
from copbridge.geo.records import BoxPoint, CameraArrays, Fix, Pose, PoseArrays, box_point
from copbridge.geo.terrain import GeoTiffTerrain, SrtmTiles, Terrain, intersect_terrain
from copbridge.geo.uncertainty import (
    CE90_PER_SIGMA,
    DEFAULT_ATTITUDE_DEG,
    DEFAULT_FOCAL_REL,
    DEFAULT_GROUND_SIGMA_M,
    DEFAULT_HORIZONTAL_M,
    DEFAULT_SIGMAS,
    DEFAULT_VERTICAL_M,
    LE90_PER_SIGMA,
    UNKNOWN_CE,
    GroundSource,
    InputSigmas,
    ce90_from_covariance,
)

__all__ = [
    "CE90_PER_SIGMA",
    "DEFAULT_ATTITUDE_DEG",
    "DEFAULT_FOCAL_REL",
    "DEFAULT_GROUND_SIGMA_M",
    "DEFAULT_HORIZONTAL_M",
    "DEFAULT_SIGMAS",
    "DEFAULT_VERTICAL_M",
    "LE90_PER_SIGMA",
    "UNKNOWN_CE",
    "BoxPoint",
    "CameraArrays",
    "Fix",
    "Fixes",
    "GeoTiffTerrain",
    "Geoid",
    "GeolocationError",
    "GroundSource",
    "InputSigmas",
    "Intrinsics",
    "PlatformHeight",
    "Pose",
    "PoseArrays",
    "RayStatus",
    "SrtmTiles",
    "Terrain",
    "box_point",
    "ce90_from_covariance",
    "intersect_terrain",
    "load_egm96",
    "locate",
    "locate_pixel",
    "project",
    "ray_ned",
    "relative_height",
    "resolve_platform_hae",
]
