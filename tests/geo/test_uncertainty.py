"""CE90/LE90: the elliptical CE90 factor, and calibration against perturbed truth."""

from __future__ import annotations

import math

import numpy as np
import pytest

from copbridge.geo import (
    CE90_PER_SIGMA,
    LE90_PER_SIGMA,
    InputSigmas,
    Intrinsics,
    Pose,
    ce90_from_covariance,
    locate,
    locate_pixel,
    uncertainty,
)
from copbridge.geo.ellipsoid import enu_basis, geodetic_to_ecef

from .scenes import Scene, random_scenes


def test_ce90_factor_is_2_146_for_a_circle_and_1_645_for_a_line() -> None:
    assert float(ce90_from_covariance(4.0, 0.0, 4.0)) == pytest.approx(
        2.0 * CE90_PER_SIGMA, rel=1e-4
    )
    assert float(ce90_from_covariance(9.0, 0.0, 0.0)) == pytest.approx(
        3.0 * LE90_PER_SIGMA, rel=1e-4
    )


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.6, 0.9])
def test_elliptical_ce90_contains_90_percent_of_normal_draws(ratio: float) -> None:
    rng = np.random.default_rng(11)
    theta = 0.7
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    cov = rot @ np.diag([25.0, 25.0 * ratio**2]) @ rot.T
    ce90 = float(ce90_from_covariance(cov[0, 0], cov[0, 1], cov[1, 1]))
    draws = rng.multivariate_normal([0.0, 0.0], cov, size=400_000)
    inside = np.mean(np.hypot(draws[:, 0], draws[:, 1]) <= ce90)
    assert inside == pytest.approx(0.9, abs=0.002)


def _perturbed(
    scene: Scene, sig: InputSigmas, rng: np.random.Generator
) -> tuple[Intrinsics, Pose, float]:
    """The measured inputs: truth plus normal errors of the stated sigmas."""
    p = scene.pose
    dn, de = rng.normal(0.0, sig.horizontal_m, 2)
    dd = rng.normal(0.0, sig.vertical_m)
    lat = p.lat + math.degrees(dn / 6_371_000.0)
    lon = p.lon + math.degrees(de / (6_371_000.0 * math.cos(math.radians(p.lat))))
    angles = np.array(p.angles) + rng.normal(0.0, 1.0, 6) * np.array(sig.angle_sigmas_deg())
    pose = Pose(lat, lon, p.hae - dd, *angles.tolist())
    k = 1.0 + rng.normal(0.0, sig.focal_rel)
    i = scene.intrinsics
    intr = Intrinsics(i.width, i.height, i.fx * k, i.fy * k, i.cx, i.cy)
    assert sig.ground_m is not None
    return intr, pose, scene.ground_hae + rng.normal(0.0, sig.ground_m)


def _coverage(scale: float = 1.0) -> tuple[float, float, float, int]:
    """Fractions of truths inside CE90 and LE90 over random geometries with random sigmas."""
    rng = np.random.default_rng(2026)
    scenes = random_scenes(rng, 2400, min_depression_deg=3.0)
    hits_h = hits_v = 0
    sampled = 0
    n = 0
    for scene in scenes:
        sig = InputSigmas(
            horizontal_m=rng.uniform(0.5, 20.0),
            vertical_m=rng.uniform(0.5, 30.0),
            attitude_deg=rng.uniform(0.02, 1.0),
            focal_rel=rng.uniform(0.0, 0.03),
            ground_m=rng.uniform(0.5, 30.0),
        )
        truth = locate_pixel(
            scene.intrinsics,
            scene.pose,
            scene.u,
            scene.v,
            ground_height=scene.ground_hae,
            with_uncertainty=False,
        )
        intr, pose, ground = _perturbed(scene, sig, rng)
        try:
            rep = locate_pixel(intr, pose, scene.u, scene.v, ground_height=ground, sigmas=sig)
        except ValueError:
            continue  # the perturbed ray no longer meets the ground: nothing is reported
        n += 1
        sampled += rep.sampled
        e, nn, _ = enu_basis(truth.lat, truth.lon)
        d = np.array(geodetic_to_ecef(rep.lat, rep.lon, rep.hae)) - np.array(
            geodetic_to_ecef(truth.lat, truth.lon, truth.hae)
        )
        hits_h += math.hypot(float(e @ d), float(nn @ d)) <= scale * rep.ce90
        hits_v += abs(rep.hae - truth.hae) <= scale * rep.le90
    return hits_h / n, hits_v / n, sampled / n, n


def test_truth_falls_inside_ce90_and_le90_ninety_percent_of_the_time() -> None:
    ce_cov, le_cov, sampled, n = _coverage()
    assert n >= 2000
    assert 0.05 < sampled < 0.5  # both the linear and the sampled regimes are exercised
    assert ce_cov == pytest.approx(0.90, abs=0.02)
    assert le_cov == pytest.approx(0.90, abs=0.02)


def test_calibration_check_detects_a_ten_percent_error_in_ce90() -> None:
    # the same check fails for CE90 understated or overstated by 10 %: it has the power to fail
    low, _, _, _ = _coverage(scale=0.9)
    high, _, _, _ = _coverage(scale=1.1)
    assert low < 0.88
    assert high > 0.92


def test_grazing_views_are_sampled_and_wider_than_linearised() -> None:
    intr = Intrinsics.from_request(1920, 1080, hfov=20.0)
    pose = Pose(41.0, -104.0, 300.0, gimbal_elevation=-3.0)
    sampled = locate_pixel(intr, pose, 960, 540, ground_height=0.0)
    assert sampled.sampled
    linear = locate(intr, pose, 960, 540, 0.0, sampling=False)
    assert not linear.sampled[0]
    assert sampled.ce90 > float(linear.ce90[0])
    steep = locate_pixel(
        intr, Pose(41.0, -104.0, 300.0, gimbal_elevation=-60.0), 960, 540, ground_height=0.0
    )
    assert not steep.sampled


@pytest.mark.parametrize("elevation", [-3.0, -4.0, -5.0, -8.0, -12.0])
def test_sampled_ce90_agrees_with_a_large_monte_carlo(
    elevation: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An oblique shot 1.5 km above the ground: CE90 from the shipped draws against 50,000
    # fresh ones of the same error model. The 500 draws shipped before read 13-21 % low at
    # -3/-4 degrees (an unlucky fixed set: too-small circles at the angles that need them most).
    intr = Intrinsics.from_request(1920, 1080, hfov=60.0)
    pose = Pose(41.14, -104.8, 3300.0, gimbal_azimuth=37.0, gimbal_elevation=elevation)
    shipped = locate_pixel(intr, pose, 960, 540, ground_height=1800.0)
    assert shipped.sampled
    many = np.random.default_rng(7).standard_normal((uncertainty.N_PARAMS, 50_000))
    monkeypatch.setattr(uncertainty, "_mc_normals", lambda: many)
    reference = locate_pixel(intr, pose, 960, 540, ground_height=1800.0)
    assert shipped.ce90 == pytest.approx(reference.ce90, rel=0.05)


def test_grazing_view_where_many_perturbed_rays_miss_reports_unknown_ce() -> None:
    intr = Intrinsics.from_request(1920, 1080, hfov=20.0)
    pose = Pose(41.0, -104.0, 3000.0, gimbal_elevation=-1.9)  # dip at 3 km is 1.76 deg
    f = locate_pixel(intr, pose, 960, 540, ground_height=0.0, sigmas=InputSigmas(attitude_deg=0.5))
    assert f.sampled
    assert f.ce90 == 9_999_999.0
    assert f.ce == 9_999_999.0


def test_le90_is_the_ground_height_error_and_agl_sensor_height_moves_the_ground_too() -> None:
    intr = Intrinsics.from_request(1920, 1080, hfov=30.0)
    pose = Pose(41.0, -104.0, 1500.0, gimbal_elevation=-40.0)
    sig = InputSigmas(vertical_m=50.0, ground_m=4.0)
    f = locate_pixel(intr, pose, 960, 540, ground_height=0.0, sigmas=sig)
    assert f.le90 == pytest.approx(LE90_PER_SIGMA * 4.0, rel=1e-3)
    # ground = platform HAE - AGL: the sensor-height error no longer moves the point sideways
    agl = locate_pixel(intr, pose, 960, 540, platform_agl=1500.0, sigmas=sig)
    assert agl.ground == "agl"
    quiet = locate_pixel(
        intr, pose, 960, 540, platform_agl=1500.0, sigmas=InputSigmas(vertical_m=0.0, ground_m=4.0)
    )
    assert agl.ce90 == pytest.approx(quiet.ce90, rel=1e-6)
    assert f.ce90 > 1.5 * agl.ce90
    assert agl.le90 == pytest.approx(LE90_PER_SIGMA * math.hypot(50.0, 4.0), rel=1e-3)


def test_per_angle_sigmas_override_attitude() -> None:
    intr = Intrinsics.from_request(1920, 1080, hfov=30.0)
    pose = Pose(41.0, -104.0, 1500.0, heading=30.0, gimbal_elevation=-40.0)
    only_heading = InputSigmas(
        horizontal_m=0.0,
        vertical_m=0.0,
        focal_rel=0.0,
        ground_m=0.0,
        angles_deg=(1.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    )
    f = locate_pixel(intr, pose, 960, 540, ground_height=0.0, sigmas=only_heading)
    # heading error swings the point on a circle about the nadir: 1 deg x ground range, a line
    ground_range = 1500.0 / math.tan(math.radians(40.0))
    assert f.ce90 == pytest.approx(LE90_PER_SIGMA * math.radians(1.0) * ground_range, rel=2e-3)
    with pytest.raises(ValueError, match="non-negative"):
        InputSigmas(attitude_deg=-1.0)


def test_sampled_ce90_at_the_poles_is_the_mid_latitude_one() -> None:
    """A grazing view (sampled) at a pole and at 45 degrees: the same shot over the same
    ellipsoid, so nearly the same CE90. Before, the sampler moved each perturbed sensor in
    latitude and longitude, which near a pole turns its north by tens of degrees: 14.1 km
    against 1.09 km."""
    intr = Intrinsics.from_request(1920, 1080, hfov=30.0)

    def ce90(lat: float) -> float:
        pose = Pose(lat, 20.0, 1000.0, gimbal_elevation=-8.0)
        fix = locate_pixel(intr, pose, 960, 540, ground_height=0.0)
        assert fix.sampled
        return fix.ce90

    mid = ce90(45.0)
    for lat in (89.99999, 90.0, -90.0):
        assert ce90(lat) == pytest.approx(mid, rel=0.02), lat
