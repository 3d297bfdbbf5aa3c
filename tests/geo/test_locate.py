"""Pixel -> ground: round trips through the forward model, conventions, errors, ground choice."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from copbridge.geo import (
    CameraArrays,
    Fix,
    GeolocationError,
    InputSigmas,
    Intrinsics,
    Pose,
    PoseArrays,
    RayStatus,
    Terrain,
    box_point,
    intersect_terrain,
    load_egm96,
    locate,
    locate_pixel,
    project,
    resolve_platform_hae,
)
from copbridge.geo.ellipsoid import enu_basis, geodetic_to_ecef
from copbridge.geo.rotation import rx, ry, rz

from .scenes import random_scenes


def horizontal_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Horizontal distance (m) between two points, in the tangent plane at the first."""
    a = np.array(geodetic_to_ecef(lat1, lon1, 0.0))
    b = np.array(geodetic_to_ecef(lat2, lon2, 0.0))
    e, n, _ = enu_basis(lat1, lon1)
    d = b - a
    return float(math.hypot(float(e @ d), float(n @ d)))


def ned_offset(
    lat: float, lon: float, hae: float, glat: float, glon: float, gh: float
) -> np.ndarray:
    """NED vector from the sensor to a ground point (independent of the code under test)."""
    s = np.array(geodetic_to_ecef(lat, lon, hae))
    g = np.array(geodetic_to_ecef(glat, glon, gh))
    e, n, u = enu_basis(lat, lon)
    d = g - s
    return np.array([n @ d, e @ d, -(u @ d)])


@st.composite
def camera_and_target(draw: st.DrawFn) -> tuple[Intrinsics, Pose, float, float, float]:
    """A random camera pointed (within its FOV) at a random ground point on the ellipsoid."""
    width = draw(st.integers(320, 4096))
    height = draw(st.integers(240, 3072))
    fx = draw(st.floats(0.4, 4.0)) * width
    fy = fx * draw(st.floats(0.95, 1.05))
    cx = width / 2 + draw(st.floats(-0.05, 0.05)) * width
    cy = height / 2 + draw(st.floats(-0.05, 0.05)) * height
    rmax = math.hypot(width / 2 / fx, height / 2 / fy)
    k1 = draw(st.floats(-0.12, 0.12)) / rmax**2
    k2 = draw(st.floats(-0.03, 0.03)) / rmax**4
    k3 = draw(st.floats(-0.01, 0.01)) / rmax**6
    p1 = draw(st.floats(-0.004, 0.004)) / rmax
    p2 = draw(st.floats(-0.004, 0.004)) / rmax
    intr = Intrinsics(width, height, fx, fy, cx, cy, k1, k2, p1, p2, k3)

    lat = draw(st.floats(-85.0, 85.0))
    lon = draw(st.floats(-180.0, 180.0))
    alt = draw(st.floats(20.0, 8000.0))
    # the ground point: 0 to 6x the altitude away, any bearing
    dist = alt * draw(st.floats(0.0, 6.0))
    bearing = draw(st.floats(0.0, 2 * math.pi))
    glat = lat + math.degrees(dist * math.cos(bearing) / 6.37e6)
    glon = lon + math.degrees(dist * math.sin(bearing) / (6.37e6 * math.cos(math.radians(lat))))
    assume(-89.9 < glat < 89.9)

    heading = draw(st.floats(0.0, 360.0))
    pitch = draw(st.floats(-30.0, 30.0))
    roll = draw(st.floats(-45.0, 45.0))
    # gimbal angles that point the boresight near the target, seen from the platform frame
    v_ned = ned_offset(lat, lon, alt, glat, glon, 0.0)
    v_p = (rz(heading) @ ry(pitch) @ rx(roll)).T @ v_ned
    az = math.degrees(math.atan2(v_p[1], v_p[0]))
    el = math.degrees(math.atan2(-v_p[2], math.hypot(v_p[0], v_p[1])))
    hfov = math.degrees(2 * math.atan(width / 2 / fx))
    vfov = math.degrees(2 * math.atan(height / 2 / fy))
    pose = Pose(
        lat,
        lon,
        alt,
        heading,
        pitch,
        roll,
        az + draw(st.floats(-0.3, 0.3)) * hfov,
        el + draw(st.floats(-0.3, 0.3)) * vfov,
        draw(st.floats(-180.0, 180.0)),
    )
    return intr, pose, glat, glon, 0.0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(camera_and_target())
def test_projected_ground_point_locates_back_within_a_millimetre(
    case: tuple[Intrinsics, Pose, float, float, float],
) -> None:
    intr, pose, glat, glon, gh = case
    u, v, in_front = project(intr, pose, glat, glon, gh)
    assume(bool(in_front[0]))
    assume(
        -0.2 * intr.width < u[0] < 1.2 * intr.width
        and -0.2 * intr.height < v[0] < 1.2 * intr.height
    )
    fixes = locate(intr, pose, u, v, gh, with_uncertainty=False)
    assume(fixes.status[0] != RayStatus.UNDISTORTION_FAILED)  # beyond the lens fold
    assert fixes.status[0] == RayStatus.OK
    assert horizontal_m(glat, glon, float(fixes.lat[0]), float(fixes.lon[0])) <= 1e-3
    one = locate_pixel(
        intr, pose, float(u[0]), float(v[0]), ground_height=gh, with_uncertainty=False
    )
    assert horizontal_m(glat, glon, one.lat, one.lon) <= 1e-3


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(camera_and_target(), st.floats(-400.0, 5000.0))
def test_round_trip_on_a_raised_ellipsoid_is_within_the_raised_surface_tolerance(
    case: tuple[Intrinsics, Pose, float, float, float], ground: float
) -> None:
    intr, pose, glat, glon, _ = case
    pose = Pose(pose.lat, pose.lon, pose.hae + ground, *pose.angles)
    u, v, in_front = project(intr, pose, glat, glon, ground)
    assume(bool(in_front[0]))
    fixes = locate(intr, pose, u, v, ground, with_uncertainty=False)
    assume(fixes.status[0] == RayStatus.OK)
    # (a+h, b+h) is within 1.3 cm of height h; horizontally that is 1.3 cm / tan(depression)
    d = ned_offset(pose.lat, pose.lon, pose.hae, glat, glon, ground)
    tan_dep = d[2] / math.hypot(d[0], d[1]) if math.hypot(d[0], d[1]) > 0 else math.inf
    tol = 1e-3 + 0.013 * abs(ground) / 9000.0 / max(tan_dep, 1e-3)
    assert horizontal_m(glat, glon, float(fixes.lat[0]), float(fixes.lon[0])) <= tol
    assert abs(float(fixes.hae[0]) - ground) <= 0.013 * abs(ground) / 9000.0 + 1e-6


def test_scalar_and_vectorised_paths_agree() -> None:
    rng = np.random.default_rng(7)
    scenes = random_scenes(rng, 300, min_depression_deg=4.0)
    scalar = [
        locate_pixel(s.intrinsics, s.pose, s.u, s.v, ground_height=s.ground_hae) for s in scenes
    ]
    batch = locate(
        CameraArrays.from_intrinsics([s.intrinsics for s in scenes]),
        PoseArrays.from_poses([s.pose for s in scenes]),
        [s.u for s in scenes],
        [s.v for s in scenes],
        [s.ground_hae for s in scenes],
    )
    assert batch.ok.all()
    assert batch.sampled.any()
    assert (~batch.sampled).any()
    np.testing.assert_allclose(batch.lat, [f.lat for f in scalar], rtol=0, atol=1e-10)
    np.testing.assert_allclose(batch.lon, [f.lon for f in scalar], rtol=0, atol=1e-10)
    np.testing.assert_allclose(batch.hae, [f.hae for f in scalar], rtol=0, atol=1e-5)
    np.testing.assert_allclose(batch.slant_range, [f.slant_range for f in scalar], rtol=1e-10)
    np.testing.assert_allclose(batch.ce90, [f.ce90 for f in scalar], rtol=1e-6)
    np.testing.assert_allclose(batch.le90, [f.le90 for f in scalar], rtol=1e-9)
    assert batch.sampled.tolist() == [f.sampled for f in scalar]


def test_distorted_batch_matches_scalar_undistortion() -> None:
    intr = Intrinsics(1920, 1080, 1200.0, 1190.0, 950.0, 548.0, -0.25, 0.08, 0.001, -0.0015, -0.01)
    pose = Pose(41.0, -104.0, 1500.0, 30.0, 2.0, -3.0, 10.0, -40.0, 1.0)
    us = np.linspace(0, 1920, 9)
    vs = np.linspace(0, 1080, 9)
    batch = locate(intr, pose, us, vs, 0.0)
    for i, (u, v) in enumerate(zip(us, vs, strict=True)):
        f = locate_pixel(intr, pose, float(u), float(v), ground_height=0.0)
        assert f.lat == pytest.approx(batch.lat[i], abs=1e-10)
        assert f.lon == pytest.approx(batch.lon[i], abs=1e-10)


# --- conventions (spec: NED, heading clockwise from north, elevation negative down) ----------


def _ground_offset(pose: Pose, u: float = 960.0, v: float = 540.0) -> np.ndarray:
    intr = Intrinsics.from_request(1920, 1080, hfov=60.0)
    f = locate_pixel(intr, pose, u, v, ground_height=0.0, with_uncertainty=False)
    return ned_offset(pose.lat, pose.lon, pose.hae, f.lat, f.lon, f.hae)


def test_heading_is_clockwise_from_north_and_elevation_negative_down() -> None:
    d = _ground_offset(Pose(10.0, 20.0, 1000.0, heading=90.0, gimbal_elevation=-45.0))
    assert d[1] == pytest.approx(1000.0, rel=1e-3)  # east, at 45 deg down: range = height
    assert abs(d[0]) < 0.5
    d = _ground_offset(Pose(10.0, 20.0, 1000.0, gimbal_azimuth=180.0, gimbal_elevation=-60.0))
    assert d[0] == pytest.approx(-1000.0 / math.tan(math.radians(60.0)), rel=1e-3)  # south


def test_pitch_up_raises_the_line_of_sight_and_right_roll_lowers_a_right_looking_one() -> None:
    base = _ground_offset(Pose(10.0, 20.0, 1000.0, gimbal_elevation=-45.0))
    nose_up = _ground_offset(Pose(10.0, 20.0, 1000.0, pitch=10.0, gimbal_elevation=-45.0))
    assert nose_up[0] == pytest.approx(1000.0 / math.tan(math.radians(35.0)), rel=1e-3)
    assert nose_up[0] > base[0]
    right_wing_down = _ground_offset(
        Pose(10.0, 20.0, 1000.0, roll=10.0, gimbal_azimuth=90.0, gimbal_elevation=-45.0)
    )
    assert right_wing_down[1] == pytest.approx(1000.0 / math.tan(math.radians(55.0)), rel=1e-3)


def test_gimbal_roll_is_clockwise_seen_from_behind() -> None:
    # rolled 90 deg clockwise, the image's right edge looks down: a right-of-centre pixel lands
    # nearer than the centre and (looking north) no further east
    pose = Pose(10.0, 20.0, 1000.0, gimbal_elevation=-30.0, gimbal_roll=90.0)
    centre = _ground_offset(pose)
    right = _ground_offset(pose, u=1260.0)
    assert right[0] < centre[0] - 100.0
    assert abs(right[1]) < 0.5


def test_box_point_is_bottom_centre_for_ground_objects_and_centre_otherwise() -> None:
    assert box_point(100, 200, 20, 60, ground_object=True) == (110.0, 260.0, "bbox-bottom-centre")
    assert box_point(100, 200, 20, 60, ground_object=False) == (110.0, 230.0, "bbox-centre")


# --- errors ----------------------------------------------------------------------------------


def test_line_of_sight_above_the_horizon_is_an_error_naming_the_angle() -> None:
    intr = Intrinsics.from_request(1920, 1080, hfov=30.0)
    pose = Pose(41.0, -104.0, 2000.0, gimbal_elevation=3.2)
    with pytest.raises(GeolocationError, match=r"it points 3\.2° above the horizon"):
        locate_pixel(intr, pose, 960, 540, ground_height=0.0)
    fixes = locate(intr, pose, [960.0, 960.0], [540.0, 5000.0], 0.0)
    assert fixes.status[0] == RayStatus.ABOVE_HORIZON
    assert fixes.status[1] == RayStatus.OK
    assert math.isnan(fixes.lat[0])
    err = fixes.error(0)
    assert err is not None
    assert "3.2° above the horizon" in str(err)
    assert fixes.error(1) is None


def test_ray_below_the_horizon_that_misses_the_earth_names_the_dip() -> None:
    intr = Intrinsics.from_request(1920, 1080, hfov=10.0)
    pose = Pose(0.0, 0.0, 400_000.0, gimbal_elevation=-5.0)  # dip at 400 km is ~20 deg
    with pytest.raises(GeolocationError, match=r"5\.0° below the horizon, above the 19\.\d° dip"):
        locate_pixel(intr, pose, 960, 540, ground_height=0.0)
    assert locate(intr, pose, 960, 540, 0.0).status[0] == RayStatus.MISSES_SURFACE


def test_sensor_below_the_ground_height_is_an_error() -> None:
    intr = Intrinsics.from_request(1920, 1080, hfov=30.0)
    pose = Pose(41.0, -104.0, 1000.0, gimbal_elevation=-45.0)
    with pytest.raises(GeolocationError, match="below the ground height"):
        locate_pixel(intr, pose, 960, 540, ground_height=1500.0)
    assert locate(intr, pose, 960, 540, 1500.0).status[0] == RayStatus.SENSOR_BELOW_SURFACE


@pytest.mark.parametrize("above_m", [0.0, 0.05, -0.0])
def test_a_sensor_on_the_ground_surface_is_an_error_not_the_camera_s_own_position(
    above_m: float,
) -> None:
    """At the surface the ray meets it at the camera: every box gave the camera's position
    with a CE90 of 20-30 m (and at exactly 0 with no ground a "-0.0 m below" message)."""
    intr = Intrinsics.from_request(1920, 1080, hfov=60.0)
    pose = Pose(41.0, -104.0, 1500.0 + above_m, gimbal_elevation=-30.0)
    with pytest.raises(GeolocationError, match=r"only [0-9.]+ m above the ground height"):
        locate_pixel(intr, pose, 960, 540, ground_height=1500.0)
    with pytest.raises(GeolocationError, match=r"only 0\.00 m above the ground height"):
        locate_pixel(
            intr, Pose(41.0, -104.0, 0.0, gimbal_elevation=-30.0), 960, 540, platform_agl=0.0
        )
    fixes = locate(intr, pose, [960.0], [540.0], 1500.0)
    assert fixes.status[0] == RayStatus.SENSOR_BELOW_SURFACE
    assert math.isnan(fixes.lat[0])
    assert fixes.error(0) is not None


@pytest.mark.parametrize(("agl", "elevation"), [(1.0, -2.0), (2.0, -3.0), (5.0, -8.0)])
def test_a_low_agl_sensor_s_sampled_error_circle_stays_known(agl: float, elevation: float) -> None:
    """The on-the-ground check first looked at the unshifted sensor: every Monte Carlo sample
    whose sensor moved up (its ground with it) counted as a miss, so CE90 became unknown."""
    intr = Intrinsics(width=1920, height=1080, fx=1400, fy=1400, cx=960, cy=540)
    pose = Pose(41.0, -104.0, 1000.0 + agl, gimbal_elevation=elevation)
    sigmas = InputSigmas(horizontal_m=5.0, vertical_m=5.0)
    fix = locate(
        intr,
        pose,
        960.0,
        540.0,
        1000.0,
        sigmas=sigmas,
        ground_sigma_m=0.5,
        ground_follows_sensor=True,
    )
    assert fix.sampled[0]
    assert float(fix.ce90[0]) < 100.0


def test_no_terrain_data_under_a_sensor_below_any_land_is_no_terrain_hit() -> None:
    class NoData:
        posting_m = 30.0

        def height_msl(self, lat: Any, lon: Any) -> Any:
            return np.full(np.shape(np.atleast_1d(lat)), np.nan)

    sensor = tuple(float(np.asarray(v).ravel()[0]) for v in geodetic_to_ecef(31.5, 35.5, -700.0))
    # It raised "the sensor is inf m below the terrain model" instead of falling back.
    assert intersect_terrain(sensor, (0.0, 0.0, -1.0), NoData(), load_egm96()) is None  # type: ignore[arg-type]


def test_undistortion_beyond_the_lens_fold_is_a_clear_error() -> None:
    intr = Intrinsics(1920, 1080, 500.0, 500.0, 960.0, 540.0, k1=-0.5)
    pose = Pose(41.0, -104.0, 1000.0, gimbal_elevation=-90.0)
    with pytest.raises(GeolocationError, match="undistortion did not converge") as info:
        locate_pixel(intr, pose, 0.0, 0.0, ground_height=0.0)
    assert info.value.field == "camera.distortion"
    fixes = locate(intr, pose, [0.0, 960.0], [0.0, 540.0], 0.0)
    assert fixes.status.tolist() == [RayStatus.UNDISTORTION_FAILED, RayStatus.OK]


def test_non_finite_pose_is_rejected_naming_the_field() -> None:
    intr = Intrinsics.from_request(1920, 1080, hfov=30.0)
    with pytest.raises(GeolocationError, match=r"gimbal\.elevation") as info:
        locate_pixel(intr, Pose(41.0, -104.0, 1000.0, gimbal_elevation=math.nan), 1, 1)
    assert info.value.field == "gimbal.elevation"


# --- ground choice (spec order) ------------------------------------------------------------


class FlatTerrain:
    """A terrain model that is flat at ``height`` (MSL) inside a lat/lon box."""

    def __init__(self, height: float, box: tuple[float, float, float, float]) -> None:
        self.height = height
        self.box = box

    @property
    def posting_m(self) -> float:
        return 30.0

    def height_msl(self, lat: object, lon: object) -> np.ndarray:
        la = np.atleast_1d(np.asarray(lat, dtype=float))
        lo = np.atleast_1d(np.asarray(lon, dtype=float))
        s, w, n, e = self.box
        inside = (la >= s) & (la <= n) & (lo >= w) & (lo <= e)
        return np.asarray(np.where(inside, self.height, np.nan), dtype=np.float64)

    def covers(self, lat: object, lon: object) -> np.ndarray:
        return np.asarray(~np.isnan(self.height_msl(lat, lon)), dtype=np.bool_)


def test_ground_choice_follows_the_spec_order() -> None:
    intr = Intrinsics.from_request(1920, 1080, hfov=30.0)
    pose = Pose(41.0, -104.0, 3000.0, gimbal_elevation=-45.0)
    terrain = FlatTerrain(1000.0, (40.9, -104.1, 41.1, -103.9))
    assert isinstance(terrain, Terrain)

    req = locate_pixel(
        intr, pose, 960, 540, ground_height=500.0, terrain=terrain, platform_agl=10.0
    )
    assert req.ground == "request"
    assert req.hae == pytest.approx(500.0, abs=0.02)

    ter = locate_pixel(intr, pose, 960, 540, terrain=terrain, platform_agl=10.0)
    assert ter.ground == "terrain"
    n = float(
        __import__("copbridge.geo", fromlist=["load_egm96"])
        .load_egm96()
        .undulation(ter.lat, ter.lon)
    )
    assert ter.hae == pytest.approx(1000.0 + n, abs=0.01)
    assert ter.slant_range == pytest.approx((3000.0 - 1000.0 - n) * math.sqrt(2.0), rel=1e-3)

    outside = FlatTerrain(1000.0, (10.0, 10.0, 11.0, 11.0))
    agl = locate_pixel(intr, pose, 960, 540, terrain=outside, platform_agl=1200.0)
    assert agl.ground == "agl"
    assert agl.hae == pytest.approx(1800.0, abs=0.02)

    ell = locate_pixel(intr, pose, 960, 540, terrain=outside)
    assert ell.ground == "ellipsoid"
    assert ell.hae == pytest.approx(0.0, abs=0.02)
    assert ell.ce90 > 5 * req.ce90  # the unknown ground height widens the error


def test_msl_ground_height_is_converted_with_the_geoid_at_the_point() -> None:
    intr = Intrinsics.from_request(1920, 1080, hfov=30.0)
    pose = Pose(41.14, -104.81, 3000.0, gimbal_elevation=-45.0)
    f = locate_pixel(intr, pose, 960, 540, ground_height=1855.4, ground_height_ref="msl")
    assert f.hae == pytest.approx(1855.4 - 15.8, abs=0.5)


def test_platform_height_resolves_msl_and_agl() -> None:
    msl = resolve_platform_hae(2936.4, "msl", 41.14, -104.81)
    assert msl.hae == pytest.approx(2936.4 - 15.8, abs=0.5)
    terrain = FlatTerrain(1800.0, (41.0, -105.0, 42.0, -104.0))
    agl = resolve_platform_hae(300.0, "agl", 41.14, -104.81, terrain=terrain)
    assert agl.hae == pytest.approx(1800.0 - 15.8 + 300.0, abs=0.5)
    assert agl.agl == 300.0
    blind = resolve_platform_hae(300.0, "agl", 41.14, -104.81)
    assert blind.hae == 300.0
    assert agl.absolute
    assert msl.absolute
    assert not blind.absolute
    assert resolve_platform_hae(12.0, "hae", 0.0, 0.0).hae == 12.0


def test_fix_reports_cot_one_sigma_values() -> None:
    f = Fix(1.0, 2.0, 3.0, ce90=21.46, le90=16.449, slant_range=100.0, ground="request")
    assert f.ce == pytest.approx(10.0)
    assert f.le == pytest.approx(10.0)
    unknown = Fix(
        1.0, 2.0, 3.0, ce90=9_999_999.0, le90=9_999_999.0, slant_range=1.0, ground="ellipsoid"
    )
    assert unknown.ce == 9_999_999.0


def test_agl_over_unknown_ground_keeps_the_position_and_widens_the_height() -> None:
    # AGL with no terrain under the platform: the ground is assumed at 0 HAE. Where the point
    # lies does not depend on that (the geometry is relative to the ground under the
    # platform); its height does, so LE90 must own up to it instead of claiming metres.
    intr = Intrinsics.from_request(1920, 1080, hfov=30.0)
    pose = Pose(41.14, -104.81, 1200.0, gimbal_elevation=-40.0)
    known = locate_pixel(intr, pose, 900, 600, platform_agl=1200.0)
    blind = locate_pixel(intr, pose, 900, 600, platform_agl=1200.0, platform_absolute=False)
    assert (blind.lat, blind.lon, blind.hae, blind.ce90) == (
        known.lat,
        known.lon,
        known.hae,
        known.ce90,
    )
    assert known.height_absolute
    assert not blind.height_absolute
    assert known.le90 < 50.0
    assert blind.le90 == pytest.approx(math.hypot(known.le90, 1.6449 * 500.0))
    # the same shot 1,840 m higher (true ground known): same place within a metre
    high = Pose(41.14, -104.81, 1840.0 + 1200.0, gimbal_elevation=-40.0)
    true = locate_pixel(intr, high, 900, 600, ground_height=1840.0)
    assert _metres_apart(true, blind) < 1.0


def _metres_apart(a: Fix, b: Fix) -> float:
    d = np.array(geodetic_to_ecef(b.lat, b.lon, 0.0))
    d -= np.array(geodetic_to_ecef(a.lat, a.lon, 0.0))
    e, n, _ = enu_basis(a.lat, a.lon)
    return math.hypot(float(e @ d), float(n @ d))
