"""The vectorised pixel-to-ground pipeline: normalised ray -> NED -> ECEF -> ellipsoid hit.

Every step is a handful of flat float64 array operations over all rays at once, and the
intermediate results are kept (``RayGeometry``) so the uncertainty Jacobian reuses them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from copbridge.geo.ellipsoid import (
    WGS84_A,
    WGS84_B,
    WGS84_E2,
    FloatArray,
    ecef_to_geodetic_sc,
    intersect_raised_ellipsoid,
)
from copbridge.geo.errors import MIN_CLEARANCE_M, RayStatus
from copbridge.geo.rotation import Vec3, apply_chain

StatusArray = npt.NDArray[np.int8]


class RayGeometry(NamedTuple):
    """Everything computed for a batch of rays (shapes (n,), or (6, n) for the angle trig)."""

    status: StatusArray
    cos: FloatArray  # (6, n) cos of heading, pitch, roll, gimbal az, el, roll
    sin: FloatArray
    d_ned: Vec3  # R (1, x, y): unnormalised line of sight in NED at the sensor
    slat: FloatArray  # sensor latitude / longitude trig (NED <-> ECEF)
    clat: FloatArray
    slon: FloatArray
    clon: FloatArray
    s_ecef: Vec3
    d_ecef: Vec3
    t: FloatArray  # ground point = s + t d (NaN where the ray fails)
    p_ecef: Vec3
    glat: FloatArray  # ground point latitude, longitude (degrees) and HAE
    glon: FloatArray
    gh: FloatArray
    gslat: FloatArray  # ground point latitude / longitude trig (ENU at the point)
    gclat: FloatArray
    gslon: FloatArray
    gclon: FloatArray
    ground_hae: FloatArray  # the height of the surface that was intersected


def sincos_half(half_angle: FloatArray) -> tuple[FloatArray, FloatArray]:
    """cos and sin of twice ``half_angle`` (radians) from one tangent.

    Weierstrass: t = tan(x/2), cos x = (1 - t^2)/(1 + t^2), sin x = 2t/(1 + t^2). Accurate to
    a few ulp everywhere (t stays finite at x = pi in floating point), and numpy's tan is about
    three times faster than its sin and cos together, which dominate the whole pipeline.
    """
    t = np.tan(half_angle)
    t2 = t * t
    inv = 1.0 / (1.0 + t2)
    return (1.0 - t2) * inv, 2.0 * t * inv


def ned_to_ecef(
    slat: FloatArray, clat: FloatArray, slon: FloatArray, clon: FloatArray, v: Vec3
) -> Vec3:
    """Rotate a NED vector at (lat, lon) to ECEF axes."""
    n, e, d = v
    t = -slat * n - clat * d
    return clon * t - slon * e, slon * t + clon * e, clat * n - slat * d


def ecef_to_ned(
    slat: FloatArray, clat: FloatArray, slon: FloatArray, clon: FloatArray, v: Vec3
) -> Vec3:
    """Rotate an ECEF vector to the NED axes at (lat, lon)."""
    x, y, z = v
    t = clon * x + slon * y
    return -slat * t + clat * z, -slon * x + clon * y, -clat * t - slat * z


def solve_rays(
    xn: FloatArray,
    yn: FloatArray,
    lat: FloatArray,
    lon: FloatArray,
    hae: FloatArray,
    angles_deg: FloatArray,
    ground_hae: FloatArray,
    shift_ned: tuple[FloatArray, FloatArray, FloatArray] | None = None,
) -> RayGeometry:
    """Intersect the rays through undistorted normalised coordinates (xn, yn) with the ground.

    ``angles_deg`` has shape (6, n) in chain order (heading, pitch, roll, gimbal azimuth,
    elevation, roll); the other arrays shape (n,). The ground is the ellipsoid raised by
    ``ground_hae``. ``shift_ned`` moves each sensor by (north, east, down) metres of the frame
    at (lat, lon, hae) while the rays keep that frame's directions: a position error does not
    turn the attitude's north (near a pole, moving 5 m would turn it by tens of degrees).
    Rays that fail get NaN results and a non-zero ``status`` (RayStatus).
    """
    n = xn.shape[0]
    # one trig call for the six angles and the sensor latitude/longitude
    half = np.empty((8, n))
    np.multiply(angles_deg, np.pi / 360.0, out=half[:6])
    np.multiply(lat, np.pi / 360.0, out=half[6])
    np.multiply(lon, np.pi / 360.0, out=half[7])
    cs, sn = sincos_half(half)
    cos, sin = cs[:6], sn[:6]
    clat, clon, slat, slon = cs[6], cs[7], sn[6], sn[7]

    d_ned = apply_chain(cos, sin, 1.0, xn, yn)
    d_ecef = ned_to_ecef(slat, clat, slon, clon, d_ned)

    nrad = WGS84_A / np.sqrt(1.0 - WGS84_E2 * slat * slat)
    r = (nrad + hae) * clat
    s_ecef = (r * clon, r * slon, (nrad * (1.0 - WGS84_E2) + hae) * slat)
    if shift_ned is not None:
        shift = ned_to_ecef(slat, clat, slon, clon, shift_ned)
        s_ecef = (s_ecef[0] + shift[0], s_ecef[1] + shift[1], s_ecef[2] + shift[2])

    t, qc, disc = intersect_raised_ellipsoid(*s_ecef, *d_ecef, ground_hae)
    sensor_hae = hae if shift_ned is None else hae - shift_ned[2]  # a sample's shifted sensor
    with np.errstate(invalid="ignore"):
        grounded = (sensor_hae - ground_hae) < MIN_CLEARANCE_M  # every box lands on the camera
    t = np.where(grounded, np.nan, t)
    px = s_ecef[0] + t * d_ecef[0]
    py = s_ecef[1] + t * d_ecef[1]
    pz = s_ecef[2] + t * d_ecef[2]
    gslat, gclat, glon_rad, gh = ecef_to_geodetic_sc(px, py, pz)
    glat = np.degrees(np.arctan2(gslat, gclat))
    p_axis = np.sqrt(px * px + py * py)
    with np.errstate(invalid="ignore", divide="ignore"):
        inv_p = 1.0 / p_axis
    on_axis = p_axis == 0.0  # at a pole any east direction will do
    gclon = np.where(on_axis, 1.0, px * inv_p)
    gslon = np.where(on_axis, 0.0, py * inv_p)

    status = np.zeros(n, dtype=np.int8)
    failed = np.isnan(t)
    if failed.any():
        status[failed & (disc < 0.0)] = RayStatus.MISSES_SURFACE
        status[failed & (d_ned[2] <= 0.0)] = RayStatus.ABOVE_HORIZON
        status[failed & ((qc < 0.0) | grounded)] = RayStatus.SENSOR_BELOW_SURFACE
        status[failed & (status == 0)] = RayStatus.MISSES_SURFACE
        bad_input = ~np.isfinite(xn + yn + lat + lon + hae + ground_hae + angles_deg.sum(axis=0))
        status[bad_input] = RayStatus.INVALID_INPUT
    return RayGeometry(
        status=status,
        cos=cos,
        sin=sin,
        d_ned=d_ned,
        slat=slat,
        clat=clat,
        slon=slon,
        clon=clon,
        s_ecef=s_ecef,
        d_ecef=d_ecef,
        t=t,
        p_ecef=(px, py, pz),
        glat=glat,
        glon=np.degrees(glon_rad),
        gh=gh,
        gslat=gslat,
        gclat=gclat,
        gslon=gslon,
        gclon=gclon,
        ground_hae=ground_hae,
    )


def surface_normal(p: Vec3, ground_hae: FloatArray) -> tuple[Vec3, FloatArray]:
    """Half-gradient n of F = (x^2+y^2)/A^2 + z^2/B^2 - 1 at p, and g = -dF/dh / 2.

    A = a + h, B = b + h. Moving along the ray by dt and the surface by dh keeps the point on
    the surface when n.dP = g dh.
    """
    ia2 = 1.0 / (WGS84_A + ground_hae) ** 2
    ib2 = 1.0 / (WGS84_B + ground_hae) ** 2
    px, py, pz = p
    nx, ny, nz = px * ia2, py * ia2, pz * ib2
    g = (px * nx + py * ny) / (WGS84_A + ground_hae) + pz * nz / (WGS84_B + ground_hae)
    return (nx, ny, nz), g
