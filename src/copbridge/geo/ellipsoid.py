"""WGS84 geodesy on numpy arrays: geodetic <-> ECEF, the local NED/ENU bases, ray-ellipsoid hits.

Hand-written rather than pymap3d so that one pass over flat float64 arrays (no per-call object
overhead, no matrices) feeds both the location and its analytic Jacobian.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

WGS84_A = 6378137.0
"""Semi-major axis (m)."""
WGS84_F = 1.0 / 298.257223563
"""Flattening."""
WGS84_B = WGS84_A * (1.0 - WGS84_F)
"""Semi-minor axis (m)."""
WGS84_E2 = WGS84_F * (2.0 - WGS84_F)
"""First eccentricity squared."""
WGS84_EP2 = WGS84_E2 / (1.0 - WGS84_E2)
"""Second eccentricity squared."""


def geodetic_to_ecef(
    lat_deg: npt.ArrayLike, lon_deg: npt.ArrayLike, hae: npt.ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """ECEF x, y, z (m) of geodetic latitude/longitude (degrees) and height above the ellipsoid."""
    lat = np.radians(lat_deg)
    lon = np.radians(lon_deg)
    h = np.asarray(hae, dtype=np.float64)
    slat, clat = np.sin(lat), np.cos(lat)
    n = WGS84_A / np.sqrt(1.0 - WGS84_E2 * slat * slat)
    r = (n + h) * clat
    return r * np.cos(lon), r * np.sin(lon), (n * (1.0 - WGS84_E2) + h) * slat


def ecef_to_geodetic_sc(
    x: FloatArray, y: FloatArray, z: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """sin(lat), cos(lat), longitude (radians) and height above the ellipsoid of ECEF points.

    Bowring's method with two refinements: below 1 µm in latitude and height for any point from
    the Earth's centre region to far beyond orbit heights, and exact at the poles. Returns sine
    and cosine of latitude because the local basis needs them and ``arctan2`` is costly.
    """
    # plain products and sqrt: numpy's hypot and ** 3 are several times slower
    p = np.sqrt(x * x + y * y)
    # reduced latitude start: tan(beta) = (a/b) z/p; kept as an unnormalised (cos, sin) pair
    cb = WGS84_B * p
    sb = WGS84_A * z
    for _ in range(2):
        inv = 1.0 / np.sqrt(cb * cb + sb * sb)
        cb *= inv
        sb *= inv
        num = z + (WGS84_EP2 * WGS84_B) * (sb * sb * sb)
        den = p - (WGS84_E2 * WGS84_A) * (cb * cb * cb)
        # tan(beta) = (1 - f) tan(phi)
        cb = den
        sb = (1.0 - WGS84_F) * num
    norm = np.sqrt(den * den + num * num)
    slat = num / norm
    clat = den / norm
    h = p * clat + z * slat - WGS84_A * np.sqrt(1.0 - WGS84_E2 * slat * slat)
    return slat, clat, np.arctan2(y, x), h


def ecef_to_geodetic(
    x: npt.ArrayLike, y: npt.ArrayLike, z: npt.ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Geodetic latitude, longitude (degrees) and height above the ellipsoid of ECEF points."""
    slat, clat, lon, h = ecef_to_geodetic_sc(
        np.asarray(x, dtype=np.float64),
        np.asarray(y, dtype=np.float64),
        np.asarray(z, dtype=np.float64),
    )
    return np.degrees(np.arctan2(slat, clat)), np.degrees(lon), h


def enu_basis(
    lat_deg: npt.ArrayLike, lon_deg: npt.ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """East, north and up unit vectors in ECEF at the given points, each of shape (..., 3)."""
    lat = np.radians(lat_deg)
    lon = np.radians(lon_deg)
    sl, cl = np.sin(lat), np.cos(lat)
    so, co = np.sin(lon), np.cos(lon)
    zero = np.zeros_like(sl)
    east = np.stack([-so, co, zero], axis=-1)
    north = np.stack([-sl * co, -sl * so, cl], axis=-1)
    up = np.stack([cl * co, cl * so, sl], axis=-1)
    return east, north, up


def intersect_raised_ellipsoid(
    sx: FloatArray,
    sy: FloatArray,
    sz: FloatArray,
    dx: FloatArray,
    dy: FloatArray,
    dz: FloatArray,
    h: FloatArray,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Ray parameter t of the first hit of S + t*d with the ellipsoid (a + h, b + h).

    Returns (t, qc, disc): t is NaN where there is no hit in front of the sensor; qc < 0 means
    the sensor is inside the surface, disc < 0 that the ray misses it. The raised ellipsoid is
    within 1.3 cm of the true height-h surface up to 9 km (spec).
    """
    ia2 = 1.0 / (WGS84_A + h) ** 2
    ib2 = 1.0 / (WGS84_B + h) ** 2
    qa = (dx * dx + dy * dy) * ia2 + dz * dz * ib2
    qb = (sx * dx + sy * dy) * ia2 + sz * dz * ib2
    qc = (sx * sx + sy * sy) * ia2 + sz * sz * ib2 - 1.0
    disc = qb * qb - qa * qc
    with np.errstate(invalid="ignore", divide="ignore"):
        # stable root: t = qc / (-qb + sqrt(disc)) avoids cancellation for a sensor near the surface
        t = qc / (np.sqrt(disc) - qb)
    t = np.where((disc >= 0.0) & (qb < 0.0) & (qc >= 0.0), t, np.nan)
    return t, qc, disc
