"""The single-detection path in plain ``math``: the same pipeline and Jacobian as core/uncertainty.

The API locates one detection per request; numpy's per-call overhead would dominate there, so
this is a line-by-line scalar twin of the vectorised code (tests hold the two together).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from copbridge.geo.camera import Intrinsics, undistort_scalar
from copbridge.geo.ellipsoid import WGS84_A, WGS84_B, WGS84_E2, WGS84_EP2, WGS84_F
from copbridge.geo.errors import MIN_CLEARANCE_M, GeolocationError, RayStatus, ray_error
from copbridge.geo.records import Pose
from copbridge.geo.uncertainty import (
    GRAZING_RATIO,
    LE90_PER_SIGMA,
    UNKNOWN_CE,
    InputSigmas,
    SigmaArrays,
    ce90_from_covariance_scalar,
    sample_ce90,
)

V3 = tuple[float, float, float]
_D2R = math.pi / 180.0
MAX_LEVEL_SLOPE = 0.035
"""A rise of up to 2 degrees: a grazing view of such terrain is sampled as level ground."""


@dataclass(frozen=True, slots=True)
class ScalarRay:
    """A line of sight: undistorted normalised coords, angle trig, NED/ECEF direction, sensor."""

    xn: float
    yn: float
    cos: tuple[float, ...]
    sin: tuple[float, ...]
    d_ned: V3
    slat: float
    clat: float
    slon: float
    clon: float
    s: V3
    d: V3


@dataclass(frozen=True, slots=True)
class ScalarFix:
    """Result of :func:`finish`: point, CE90/LE90 and whether CE90 came from sampling."""

    lat: float
    lon: float
    hae: float
    ce90: float
    le90: float
    slant_range: float
    sampled: bool


def _rot(c: tuple[float, ...], s: tuple[float, ...], lo: int, v: V3) -> V3:
    """Apply Rz(k=lo) Ry(lo+1) Rx(lo+2) (lo = 0 platform, 3 gimbal) to v."""
    x, y, z = v
    cc, ss = c[lo + 2], s[lo + 2]
    y, z = cc * y - ss * z, ss * y + cc * z
    cc, ss = c[lo + 1], s[lo + 1]
    x, z = cc * x + ss * z, cc * z - ss * x
    cc, ss = c[lo], s[lo]
    return cc * x - ss * y, ss * x + cc * y, z


def ray(intr: Intrinsics, pose: Pose, u: float, v: float) -> ScalarRay:
    """The line of sight through pixel (u, v) (undistorted first when distortion is given)."""
    xn = (u - intr.cx) / intr.fx
    yn = (v - intr.cy) / intr.fy
    if intr.has_distortion:
        xn, yn = undistort_scalar(xn, yn, intr.distortion)
    ang = pose.angles
    c = tuple(math.cos(a * _D2R) for a in ang)
    s = tuple(math.sin(a * _D2R) for a in ang)
    d_ned = _rot(c, s, 0, _rot(c, s, 3, (1.0, xn, yn)))
    lat = pose.lat * _D2R
    lon = pose.lon * _D2R
    slat, clat, slon, clon = math.sin(lat), math.cos(lat), math.sin(lon), math.cos(lon)
    nrad = WGS84_A / math.sqrt(1.0 - WGS84_E2 * slat * slat)
    r = (nrad + pose.hae) * clat
    sv = (r * clon, r * slon, (nrad * (1.0 - WGS84_E2) + pose.hae) * slat)
    return ScalarRay(
        xn, yn, c, s, d_ned, slat, clat, slon, clon, sv, _ned_to_ecef(slat, clat, slon, clon, d_ned)
    )


def _ned_to_ecef(slat: float, clat: float, slon: float, clon: float, v: V3) -> V3:
    n, e, d = v
    t = -slat * n - clat * d
    return clon * t - slon * e, slon * t + clon * e, clat * n - slat * d


def _ecef_to_ned(slat: float, clat: float, slon: float, clon: float, v: V3) -> V3:
    x, y, z = v
    t = clon * x + slon * y
    return -slat * t + clat * z, -slon * x + clon * y, -clat * t - slat * z


def elevation_deg(r: ScalarRay) -> float:
    """Elevation of the line of sight above the sensor's horizon (degrees)."""
    n, e, d = r.d_ned
    return math.degrees(math.atan2(-d, math.hypot(n, e)))


def hit_ellipsoid(r: ScalarRay, ground_hae: float, sensor_hae: float) -> float:
    """Ray parameter of the first hit with the ellipsoid raised by ``ground_hae``.

    Raises GeolocationError naming the elevation angle when there is none.
    """
    ia2 = 1.0 / (WGS84_A + ground_hae) ** 2
    ib2 = 1.0 / (WGS84_B + ground_hae) ** 2
    sx, sy, sz = r.s
    dx, dy, dz = r.d
    qa = (dx * dx + dy * dy) * ia2 + dz * dz * ib2
    qb = (sx * dx + sy * dy) * ia2 + sz * dz * ib2
    qc = (sx * sx + sy * sy) * ia2 + sz * sz * ib2 - 1.0
    disc = qb * qb - qa * qc
    if qc < 0.0 or sensor_hae - ground_hae < MIN_CLEARANCE_M:
        status = RayStatus.SENSOR_BELOW_SURFACE
    elif r.d_ned[2] <= 0.0:
        status = RayStatus.ABOVE_HORIZON
    elif disc < 0.0 or qb >= 0.0:
        status = RayStatus.MISSES_SURFACE
    else:
        return qc / (math.sqrt(disc) - qb)
    raise ray_error(status, elevation_deg(r), sensor_hae - ground_hae)


def ecef_to_geodetic(x: float, y: float, z: float) -> tuple[float, float, float, float, float]:
    """(sin lat, cos lat, lon rad, h, lat deg) by the same Bowring iteration as the arrays."""
    p = math.hypot(x, y)
    cb = WGS84_B * p
    sb = WGS84_A * z
    num = den = 0.0
    for _ in range(2):
        nb = math.hypot(cb, sb)
        cb3 = (cb / nb) ** 3
        sb3 = (sb / nb) ** 3
        num = z + WGS84_EP2 * WGS84_B * sb3
        den = p - WGS84_E2 * WGS84_A * cb3
        cb = den
        sb = (1.0 - WGS84_F) * num
    norm = math.hypot(den, num)
    slat = num / norm
    clat = den / norm
    h = p * clat + z * slat - WGS84_A * math.sqrt(1.0 - WGS84_E2 * slat * slat)
    return slat, clat, math.atan2(y, x), h, math.degrees(math.atan2(slat, clat))


def _dot(a: V3, b: V3) -> float:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _cross(a: V3, b: V3) -> V3:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def finish(  # noqa: PLR0915  # line-by-line twin of uncertainty.propagate; calls cost µs here
    r: ScalarRay,
    pose: Pose,
    t: float,
    surface_hae: float,
    sigmas: InputSigmas | None,
    ground_sigma_m: float,
    follow: bool = False,
    sampling: bool = True,
    slope: tuple[float, float] | None = None,
) -> ScalarFix:
    """The ground point s + t d, and (with ``sigmas``) its CE90/LE90 as in uncertainty.propagate.

    ``surface_hae`` is the height of the surface that was hit, level unless ``slope`` gives
    its rise to the north and to the east (m/m, a terrain model's): the errors then move the
    point over that tilted plane. A grazing view of a sloped surface (over ``MAX_LEVEL_SLOPE``)
    has no Monte Carlo of its own (the sampler knows level surfaces only): its CE90 is
    unknown rather than a level surface's.
    """
    sx, sy, sz = r.s
    dx, dy, dz = r.d
    px, py, pz = sx + t * dx, sy + t * dy, sz + t * dz
    gsl, gcl, glon, gh, glat = ecef_to_geodetic(px, py, pz)
    slant = t * math.sqrt(dx * dx + dy * dy + dz * dz)
    if sigmas is None:
        return ScalarFix(glat, math.degrees(glon), gh, math.nan, math.nan, slant, False)

    s4 = (r.slat, r.clat, r.slon, r.clon)
    aa = WGS84_A + surface_hae
    bb = WGS84_B + surface_hae
    ne = (px / (aa * aa), py / (aa * aa), pz / (bb * bb))
    g = (px * ne[0] + py * ne[1]) / aa + pz * ne[2] / bb
    n = _ecef_to_ned(*s4, ne)
    gso, gco = math.sin(glon), math.cos(glon)
    ge = _ecef_to_ned(*s4, (-gso, gco, 0.0))
    gn = _ecef_to_ned(*s4, (-gsl * gco, -gsl * gso, gcl))
    gu = _ecef_to_ned(*s4, (gcl * gco, gcl * gso, gsl))
    if slope is not None:
        # The surface h - T(lat, lon) = 0 has the gradient up - T_N north - T_E east, and a
        # ground height error moves it by as much: g = 1 (as the quadric's n and g above).
        rise_n, rise_e = slope
        n = (
            gu[0] - rise_n * gn[0] - rise_e * ge[0],
            gu[1] - rise_n * gn[1] - rise_e * ge[1],
            gu[2] - rise_n * gn[2] - rise_e * ge[2],
        )
        g = 1.0
    d = r.d_ned
    inv_nd = 1.0 / _dot(n, d)
    ed = _dot(ge, d) * inv_nd
    ndn = _dot(gn, d) * inv_nd
    ud = _dot(gu, d) * inv_nd
    cee = cen = cnn = vuu = 0.0

    hs, vs = sigmas.horizontal_m, sigmas.vertical_m
    for k, sig in ((0, hs), (1, hs), (2, vs)):
        nw = n[k] + (g if (k == 2 and follow) else 0.0)
        de, dn, du = ge[k] - ed * nw, gn[k] - ndn * nw, gu[k] - ud * nw
        s2 = sig * sig
        cee += s2 * de * de
        cen += s2 * de * dn
        cnn += s2 * dn * dn
        vuu += s2 * du * du

    c, s = r.cos, r.sin
    ident_c = (c[0], c[1], c[2], 1.0, 1.0, 1.0)
    ident_s = (s[0], s[1], s[2], 0.0, 0.0, 0.0)
    axes = (
        (0.0, 0.0, 1.0),
        (-s[0], c[0], 0.0),
        (c[0] * c[1], s[0] * c[1], -s[1]),
        _rot(ident_c, ident_s, 0, (0.0, 0.0, 1.0)),
        _rot(ident_c, ident_s, 0, (-s[3], c[3], 0.0)),
        _rot(ident_c, ident_s, 0, (c[3] * c[4], s[3] * c[4], -s[4])),
    )
    cn, ce_, cn_, cu = _cross(d, n), _cross(d, ge), _cross(d, gn), _cross(d, gu)
    dd = _dot(d, d)
    los2 = 0.0
    for axis, sig_deg in zip(axes, sigmas.angle_sigmas_deg(), strict=True):
        sig = sig_deg * _D2R
        nw = _dot(axis, cn)
        de = _dot(axis, ce_) - ed * nw
        dn = _dot(axis, cn_) - ndn * nw
        du = _dot(axis, cu) - ud * nw
        s2 = (sig * t) ** 2
        cee += s2 * de * de
        cen += s2 * de * dn
        cnn += s2 * dn * dn
        vuu += s2 * du * du
        ad = _dot(axis, d)
        los2 += sig * sig * (1.0 - ad * ad / dd)

    bore = axes[5]
    wf = (bore[0] - d[0], bore[1] - d[1], bore[2] - d[2])
    nw = _dot(n, wf)
    de = _dot(ge, wf) - ed * nw
    dn = _dot(gn, wf) - ndn * nw
    du = _dot(gu, wf) - ud * nw
    s2 = (sigmas.focal_rel * t) ** 2
    cee += s2 * de * de
    cen += s2 * de * dn
    cnn += s2 * dn * dn
    vuu += s2 * du * du
    los2 += sigmas.focal_rel**2 * _dot(wf, wf) / dd

    s2 = ground_sigma_m * ground_sigma_m
    cee += s2 * ed * ed * g * g
    cen += s2 * ed * ndn * g * g
    cnn += s2 * ndn * ndn * g * g
    vuu += s2 * ud * ud * g * g

    ce90 = ce90_from_covariance_scalar(cee, cen, cnn)
    le90 = LE90_PER_SIGMA * math.sqrt(vuu)
    if slope is None:
        sin_inc = -_dot(gu, d) / math.sqrt(dd)
    else:  # incidence on the tilted surface that was hit
        sin_inc = -_dot(n, d) / math.sqrt(dd * _dot(n, n))
    cos_inc = math.sqrt(max(1.0 - sin_inc * sin_inc, 0.0))
    grazing = math.sqrt(los2) * cos_inc > GRAZING_RATIO * abs(sin_inc)
    if grazing and sampling and slope is not None and math.hypot(*slope) > MAX_LEVEL_SLOPE:
        return ScalarFix(glat, math.degrees(glon), gh, UNKNOWN_CE, le90, slant, False)
    if grazing and sampling:
        ce90 = _sample_one(r, pose, surface_hae, (px, py, pz), sigmas, ground_sigma_m, follow)
        return ScalarFix(glat, math.degrees(glon), gh, ce90, le90, slant, True)
    return ScalarFix(glat, math.degrees(glon), gh, ce90, le90, slant, False)


def _sample_one(
    r: ScalarRay,
    pose: Pose,
    surface_hae: float,
    p: V3,
    sigmas: InputSigmas,
    ground_sigma_m: float,
    follow: bool,
) -> float:
    """Monte Carlo CE90 for one grazing ray through the vectorised sampler."""

    def a(x: float) -> np.ndarray[tuple[int], np.dtype[np.float64]]:
        return np.array([x], dtype=np.float64)

    out = sample_ce90(
        a(r.xn),
        a(r.yn),
        a(pose.lat),
        a(pose.lon),
        a(pose.hae),
        np.array(pose.angles, dtype=np.float64)[:, None],
        a(surface_hae),
        (a(p[0]), a(p[1]), a(p[2])),
        SigmaArrays.from_input(sigmas, ground_sigma_m),
        follow=1.0 if follow else 0.0,
    )
    return float(out[0])


def locate_scalar(
    intr: Intrinsics,
    pose: Pose,
    u: float,
    v: float,
    ground_hae: float,
    sigmas: InputSigmas | None,
    ground_sigma_m: float,
    follow: bool = False,
    sampling: bool = True,
) -> ScalarFix:
    """Locate one pixel on the ellipsoid raised by ``ground_hae``; raises GeolocationError."""
    return locate_ray(
        ray(intr, pose, u, v), pose, ground_hae, sigmas, ground_sigma_m, follow, sampling
    )


def locate_ray(
    r: ScalarRay,
    pose: Pose,
    ground_hae: float,
    sigmas: InputSigmas | None,
    ground_sigma_m: float,
    follow: bool = False,
    sampling: bool = True,
) -> ScalarFix:
    """:func:`locate_scalar` for a ray already built: a ground refined once (an MSL height
    converted at the located point) meets the same ray twice, which is built only once."""
    if not math.isfinite(ground_hae):
        raise GeolocationError(
            f"ground.height must be finite, got {ground_hae}", field="ground.height"
        )
    t = hit_ellipsoid(r, ground_hae, pose.hae)
    return finish(r, pose, t, ground_hae, sigmas, ground_sigma_m, follow, sampling)
