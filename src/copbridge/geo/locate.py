"""Public entry points: locate one detection (ground choice in the spec's order) or a batch.

``locate_pixel`` is the scalar path the API uses per detection; ``locate`` the vectorised one
for batches and the benchmark; ``project`` the forward model (ground point -> pixel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import numpy.typing as npt

from copbridge.geo import scalar
from copbridge.geo.camera import Intrinsics, distort, undistort
from copbridge.geo.core import ecef_to_ned, solve_rays
from copbridge.geo.ellipsoid import FloatArray, geodetic_to_ecef
from copbridge.geo.errors import GeolocationError, RayStatus, ray_error
from copbridge.geo.geoid import Geoid, load_egm96
from copbridge.geo.records import CameraArrays, Fix, Pose, PoseArrays
from copbridge.geo.terrain import DEFAULT_MAX_RANGE_M, Terrain, intersect_terrain, slope_at
from copbridge.geo.uncertainty import (
    DEFAULT_GROUND_SIGMA_M,
    DEFAULT_SIGMAS,
    LE90_PER_SIGMA,
    UNKNOWN_CE,
    InputSigmas,
    SigmaArrays,
    propagate,
    sample_ce90,
)

StatusArray = npt.NDArray[np.int8]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Fixes:
    """Results of :func:`locate`, one entry per ray (NaN where ``status`` != 0).

    ``status`` holds RayStatus codes; ``error(i)`` gives the GeolocationError for ray i.
    """

    lat: FloatArray
    lon: FloatArray
    hae: FloatArray
    ce90: FloatArray
    le90: FloatArray
    slant_range: FloatArray
    status: StatusArray
    sampled: BoolArray
    elevation_deg: FloatArray  # line-of-sight elevation at the sensor (failed rays only)
    height_above_ground: FloatArray  # sensor HAE - ground HAE

    def __len__(self) -> int:
        return int(self.lat.shape[0])

    @property
    def ok(self) -> BoolArray:
        """True where the ray gave a ground point."""
        return np.asarray(self.status == RayStatus.OK, dtype=np.bool_)

    def error(self, i: int) -> GeolocationError | None:
        """The error of ray i, or None when it was located."""
        st = RayStatus(int(self.status[i]))
        if st is RayStatus.OK:
            return None
        return ray_error(st, float(self.elevation_deg[i]), float(self.height_above_ground[i]))


def _b(x: npt.ArrayLike, n: int) -> FloatArray:
    return np.broadcast_to(np.asarray(x, dtype=np.float64), (n,))


def locate(
    camera: Intrinsics | CameraArrays,
    pose: Pose | PoseArrays,
    u: npt.ArrayLike,
    v: npt.ArrayLike,
    ground_hae: npt.ArrayLike,
    *,
    sigmas: InputSigmas = DEFAULT_SIGMAS,
    ground_sigma_m: npt.ArrayLike | None = None,
    ground_follows_sensor: npt.ArrayLike = False,
    with_uncertainty: bool = True,
    sampling: bool = True,
) -> Fixes:
    """Locate many pixels at once on the ellipsoid raised by ``ground_hae`` (vectorised).

    All array inputs broadcast to one length n (camera/pose fields may be scalars). Failed rays
    get NaN and a RayStatus code instead of raising. With ``with_uncertainty`` CE90/LE90 come
    from the linearised propagation, or from seeded Monte Carlo for grazing rays (``sampling``).
    ``ground_sigma_m`` defaults to ``sigmas.ground_m`` or the request-height default;
    ``ground_follows_sensor`` marks rays whose ground is platform HAE - AGL.
    """
    cam = CameraArrays.from_intrinsics([camera]) if isinstance(camera, Intrinsics) else camera
    pz = PoseArrays.from_pose(pose) if isinstance(pose, Pose) else pose
    uu = np.asarray(u, dtype=np.float64)
    vv = np.asarray(v, dtype=np.float64)
    gg = np.asarray(ground_hae, dtype=np.float64)
    n = int(np.broadcast_shapes(uu.shape, vv.shape, gg.shape, pz.lat.shape, cam.fx.shape, (1,))[0])

    xn = (_b(uu, n) - cam.cx) / cam.fx
    yn = (_b(vv, n) - cam.cy) / cam.fy
    xn = _b(xn, n)
    yn = _b(yn, n)
    und_ok: BoolArray | None = None
    if cam.has_distortion:
        xn, yn, und_ok = undistort(
            xn.copy(),
            yn.copy(),
            (cam.k1, cam.k2, cam.p1, cam.p2, cam.k3),  # type: ignore[arg-type]
        )
    lat, lon, hae = _b(pz.lat, n), _b(pz.lon, n), _b(pz.hae, n)
    angles = np.empty((6, n))
    for i, a in enumerate(
        (pz.heading, pz.pitch, pz.roll, pz.gimbal_azimuth, pz.gimbal_elevation, pz.gimbal_roll)
    ):
        angles[i] = a
    gh = _b(gg, n)
    geo = solve_rays(xn, yn, lat, lon, hae, angles, gh)
    status = geo.status
    if und_ok is not None:
        status[~und_ok] = RayStatus.UNDISTORTION_FAILED

    slant = geo.t * np.sqrt(geo.d_ecef[0] ** 2 + geo.d_ecef[1] ** 2 + geo.d_ecef[2] ** 2)
    ok = status == RayStatus.OK
    elev = np.full(n, np.nan)
    if not ok.all():
        dn, de, dd = (c[~ok] for c in geo.d_ned)
        elev[~ok] = np.degrees(np.arctan2(-dd, np.hypot(dn, de)))

    nan = np.full(n, np.nan)
    ce90, le90 = nan, nan.copy()
    sampled = np.zeros(n, dtype=np.bool_)
    if with_uncertainty:
        gsig = ground_sigma_m if ground_sigma_m is not None else sigmas.ground_sigma_m("request")
        sig = SigmaArrays.from_input(sigmas, _b(gsig, n))
        follow = _b(np.asarray(ground_follows_sensor, dtype=np.float64), n)
        with np.errstate(invalid="ignore", divide="ignore"):
            ce90, le90, grazing = propagate(geo, sig, follow)
        if sampling:
            sampled = grazing & ok
            idx = np.flatnonzero(sampled)
            if idx.size:
                sub = SigmaArrays(
                    horizontal_m=sigmas.horizontal_m,
                    vertical_m=sigmas.vertical_m,
                    angles_rad=sig.angles_rad,
                    focal_rel=sig.focal_rel,
                    ground_m=_b(sig.ground_m, n)[idx],
                )
                ce90[idx] = sample_ce90(
                    xn[idx],
                    yn[idx],
                    lat[idx],
                    lon[idx],
                    hae[idx],
                    angles[:, idx],
                    gh[idx],
                    (geo.p_ecef[0][idx], geo.p_ecef[1][idx], geo.p_ecef[2][idx]),
                    sub,
                    follow[idx],
                )
        ce90 = np.where(ok, ce90, np.nan)
        le90 = np.where(ok, le90, np.nan)
    return Fixes(
        lat=np.where(ok, geo.glat, np.nan),
        lon=np.where(ok, geo.glon, np.nan),
        hae=np.where(ok, geo.gh, np.nan),
        ce90=ce90,
        le90=le90,
        slant_range=np.where(ok, slant, np.nan),
        status=status,
        sampled=sampled,
        elevation_deg=elev,
        height_above_ground=hae - gh,
    )


def project(
    camera: Intrinsics | CameraArrays,
    pose: Pose | PoseArrays,
    lat: npt.ArrayLike,
    lon: npt.ArrayLike,
    hae: npt.ArrayLike,
) -> tuple[FloatArray, FloatArray, BoolArray]:
    """Pixel (u, v) where each ground point appears (forward model, distortion applied).

    Returns (u, v, in_front): in_front is False for points behind the camera.
    """
    cam = CameraArrays.from_intrinsics([camera]) if isinstance(camera, Intrinsics) else camera
    pz = PoseArrays.from_pose(pose) if isinstance(pose, Pose) else pose
    gx, gy, gz = geodetic_to_ecef(lat, lon, hae)
    sx, sy, sz = geodetic_to_ecef(pz.lat, pz.lon, pz.hae)
    la, lo = np.radians(pz.lat), np.radians(pz.lon)
    n_, e_, d_ = ecef_to_ned(
        np.sin(la), np.cos(la), np.sin(lo), np.cos(lo), (gx - sx, gy - sy, gz - sz)
    )
    ang = np.stack(
        np.broadcast_arrays(
            pz.heading, pz.pitch, pz.roll, pz.gimbal_azimuth, pz.gimbal_elevation, pz.gimbal_roll
        )
    )
    rad = np.radians(ang)
    cos, sin = np.cos(rad), np.sin(rad)
    x, y, z = _inverse_chain(cos, sin, n_, e_, d_)  # camera frame = R^T ned
    in_front = x > 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        xn, yn = y / x, z / x
    if cam.has_distortion:
        xn, yn = distort(xn, yn, (cam.k1, cam.k2, cam.p1, cam.p2, cam.k3))  # type: ignore[arg-type]
    return cam.fx * xn + cam.cx, cam.fy * yn + cam.cy, in_front


def _inverse_chain(
    cos: FloatArray, sin: FloatArray, x: FloatArray, y: FloatArray, z: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """R^T (x, y, z): undo heading, pitch, roll, gimbal azimuth, elevation, roll in turn."""
    for k, axis in ((0, "z"), (1, "y"), (2, "x"), (3, "z"), (4, "y"), (5, "x")):
        c, s = cos[k], -sin[k]
        if axis == "z":
            x, y = c * x - s * y, s * x + c * y
        elif axis == "y":
            x, z = c * x + s * z, c * z - s * x
        else:
            y, z = c * y - s * z, s * y + c * z
    return x, y, z


def ray_ned(camera: Intrinsics, pose: Pose, u: float, v: float) -> tuple[float, float, float]:
    """Unit line of sight of pixel (u, v) in NED at the sensor (for diagnostics and tests)."""
    r = scalar.ray(camera, pose, u, v)
    norm = math.sqrt(sum(c * c for c in r.d_ned))
    return r.d_ned[0] / norm, r.d_ned[1] / norm, r.d_ned[2] / norm


# --- one detection, with the ground choice -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlatformHeight:
    """Sensor height resolved to HAE, and its AGL when the request gave one. ``absolute`` is
    False when the HAE is the AGL on top of an assumed 0 HAE ground (no terrain model under
    the platform): heights located from it are only as good as that guess."""

    hae: float
    agl: float | None
    absolute: bool = True


UNKNOWN_DATUM_SIGMA_M = DEFAULT_GROUND_SIGMA_M["ellipsoid"]
"""1-sigma of an absolute ground height nobody gave: the same 500 m as the ellipsoid fallback."""


def relative_height(fix: Fix) -> Fix:
    """``fix`` located from a platform height above a ground of unknown absolute height (AGL,
    no terrain): the horizontal position is relative to the ground under the platform and
    holds; the height is relative to the 0 HAE guess, so LE90 is widened by the unknown
    ground height, as for the ellipsoid fallback."""
    if fix.le90 >= UNKNOWN_CE:
        return replace(fix, height_absolute=False)
    le90 = math.hypot(fix.le90, LE90_PER_SIGMA * UNKNOWN_DATUM_SIGMA_M)
    return replace(fix, le90=le90, height_absolute=False)


def resolve_platform_hae(
    alt: float,
    alt_ref: Literal["hae", "msl", "agl"],
    lat: float,
    lon: float,
    *,
    geoid: Geoid | None = None,
    terrain: Terrain | None = None,
    ground_height: float | None = None,
    ground_height_ref: Literal["hae", "msl"] = "hae",
) -> PlatformHeight:
    """Platform altitude as HAE: ``msl`` through the geoid; ``agl`` on top of the terrain
    under the platform when a model covers it, else on top of the request's ground height
    (``ground_height``: flat ground, as the AGL-only case assumes), else on top of 0 HAE
    (``absolute`` False: the located point's HAE is relative to that assumption, see
    :func:`relative_height`; its horizontal position is not affected)."""
    if not math.isfinite(alt):
        raise GeolocationError(f"platform.alt must be finite, got {alt}", field="platform.alt")
    if alt_ref == "hae":
        return PlatformHeight(alt, None)
    g = geoid if geoid is not None else load_egm96()
    if alt_ref == "msl":
        return PlatformHeight(alt + g.undulation_at(lat, lon), None)
    if alt < 0.0:
        raise GeolocationError(
            f"platform.alt above ground must be >= 0, got {alt}", field="platform.alt"
        )
    if terrain is not None:
        ground = float(terrain.height_msl(lat, lon)[0])
        if math.isfinite(ground):
            return PlatformHeight(ground + g.undulation_at(lat, lon) + alt, alt)
    if ground_height is not None and math.isfinite(ground_height):
        # On top of 0 HAE, the ray would go down to a ground the request puts elsewhere: at
        # 400 m MSL the point was 718 m short of the flat-ground answer.
        shift = g.undulation_at(lat, lon) if ground_height_ref == "msl" else 0.0
        return PlatformHeight(ground_height + shift + alt, alt)
    return PlatformHeight(alt, alt, absolute=False)


def locate_pixel(
    intrinsics: Intrinsics,
    pose: Pose,
    u: float,
    v: float,
    *,
    ground_height: float | None = None,
    ground_height_ref: Literal["hae", "msl"] = "hae",
    terrain: Terrain | None = None,
    geoid: Geoid | None = None,
    platform_agl: float | None = None,
    platform_absolute: bool = True,
    sigmas: InputSigmas = DEFAULT_SIGMAS,
    with_uncertainty: bool = True,
    max_range_m: float = DEFAULT_MAX_RANGE_M,
) -> Fix:
    """Locate one pixel, choosing the ground as the spec orders it.

    1. ``ground_height`` from the request (``msl`` is converted with the geoid at the located
       point, one refinement) -> ``ground="request"``;
    2. else ``terrain``, if the ray meets it within its coverage (and the platform height is
       ``platform_absolute``) -> ``"terrain"``;
    3. else ``platform_agl``: ground = pose.hae - AGL -> ``"agl"`` (when the platform height
       is not ``platform_absolute``, the height is relative: :func:`relative_height`);
    4. else 0 HAE -> ``"ellipsoid"`` (with a wide ground-height sigma).

    Pure ``math`` except terrain marching and Monte Carlo at grazing views. Raises
    GeolocationError naming the field or the line-of-sight angle when there is no ground point.
    """
    pose.validate()
    if not (math.isfinite(u) and math.isfinite(v)):
        raise GeolocationError("bbox gives a non-finite pixel", field="bbox")
    sig: InputSigmas | None = sigmas if with_uncertainty else None

    if ground_height is not None:
        if not math.isfinite(ground_height):
            raise GeolocationError(
                f"ground.height must be finite, got {ground_height}", field="ground.height"
            )
        gsig = sigmas.ground_sigma_m("request")
        if ground_height_ref == "hae":
            f = scalar.locate_scalar(intrinsics, pose, u, v, ground_height, sig, gsig)
        else:
            g = geoid if geoid is not None else load_egm96()
            r = scalar.ray(intrinsics, pose, u, v)
            h = ground_height + g.undulation_at(pose.lat, pose.lon)
            f = scalar.locate_ray(r, pose, h, None, gsig)
            h = ground_height + g.undulation_at(f.lat, f.lon)
            f = scalar.locate_ray(r, pose, h, sig, gsig)
        return _fix(f, "request")

    # A platform height above an assumed 0 HAE (AGL with no model under the platform) is no
    # height to march a terrain model from: the ray would cross it at the wrong place, 470 m
    # off from 500 m AGL over 100 m MSL, and be reported as absolute. AGL answers instead.
    if terrain is not None and platform_absolute:
        g = geoid if geoid is not None else load_egm96()
        r = scalar.ray(intrinsics, pose, u, v)
        dnorm = math.sqrt(r.d[0] ** 2 + r.d[1] ** 2 + r.d[2] ** 2)
        dist = intersect_terrain(
            r.s,
            (r.d[0] / dnorm, r.d[1] / dnorm, r.d[2] / dnorm),
            terrain,
            g,
            max_range_m=max_range_m,
        )
        if dist is not None:
            t = dist / dnorm
            p = (r.s[0] + t * r.d[0], r.s[1] + t * r.d[1], r.s[2] + t * r.d[2])
            _, _, lon_rad, surface, lat = scalar.ecef_to_geodetic(*p)
            # The errors move the point over the terrain's slope, not a level plane: on 15
            # degrees falling away from the camera a level plane's CE90 held 62 % of the points.
            slope = None if sig is None else slope_at(terrain, g, lat, math.degrees(lon_rad))
            f = scalar.finish(
                r, pose, t, surface, sig, sigmas.ground_sigma_m("terrain"), slope=slope
            )
            return _fix(f, "terrain")

    if platform_agl is not None:
        if not (math.isfinite(platform_agl) and platform_agl >= 0.0):
            raise GeolocationError(
                f"platform.alt above ground must be >= 0, got {platform_agl}", field="platform.alt"
            )
        f = scalar.locate_scalar(
            intrinsics,
            pose,
            u,
            v,
            pose.hae - platform_agl,
            sig,
            sigmas.ground_sigma_m("agl"),
            follow=True,
        )
        fix = _fix(f, "agl")
        return fix if platform_absolute else relative_height(fix)

    f = scalar.locate_scalar(intrinsics, pose, u, v, 0.0, sig, sigmas.ground_sigma_m("ellipsoid"))
    return _fix(f, "ellipsoid")


def _fix(f: scalar.ScalarFix, ground: Literal["request", "terrain", "agl", "ellipsoid"]) -> Fix:
    return Fix(
        lat=f.lat,
        lon=f.lon,
        hae=f.hae,
        ce90=f.ce90,
        le90=f.le90,
        slant_range=f.slant_range,
        ground=ground,
        sampled=f.sampled,
    )


__all__ = [
    "DEFAULT_GROUND_SIGMA_M",
    "Fixes",
    "PlatformHeight",
    "locate",
    "locate_pixel",
    "project",
    "ray_ned",
    "relative_height",
    "resolve_platform_hae",
]
