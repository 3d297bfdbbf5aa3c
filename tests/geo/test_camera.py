"""Camera intrinsics from the request, and the Brown-Conrady model and its inverse."""

from __future__ import annotations

import math

import numpy as np
import pytest

from copbridge.geo import GeolocationError, Intrinsics
from copbridge.geo.camera import distort, undistort, undistort_scalar


def test_fx_comes_from_hfov_and_fy_equals_fx_without_vfov() -> None:
    cam = Intrinsics.from_request(1920, 1080, hfov=60.0)
    assert cam.fx == pytest.approx(960.0 / math.tan(math.radians(30.0)))
    assert cam.fy == cam.fx
    assert (cam.cx, cam.cy) == (960.0, 540.0)
    assert not cam.has_distortion


def test_vfov_sets_fy_and_explicit_pixels_win() -> None:
    cam = Intrinsics.from_request(1920, 1080, hfov=60.0, vfov=40.0, cx=950.5, cy=530.0, k1=-0.1)
    assert cam.fy == pytest.approx(540.0 / math.tan(math.radians(20.0)))
    assert (cam.cx, cam.cy) == (950.5, 530.0)
    assert cam.has_distortion
    px = Intrinsics.from_request(1920, 1080, fx=1000.0, fy=1010.0)
    assert (px.fx, px.fy) == (1000.0, 1010.0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({}, "camera.hfov"),
        ({"hfov": 0.0}, "camera.hfov"),
        ({"hfov": 180.0}, "camera.hfov"),
        ({"hfov": 60.0, "vfov": -1.0}, "camera.vfov"),
        ({"fx": -5.0}, "camera.fx"),
        ({"hfov": 60.0, "fx": 500.0}, "camera.hfov"),  # inconsistent: hfov 60 means fx 1663
        ({"hfov": math.nan}, "camera.hfov"),
        ({"hfov": 60.0, "k1": math.inf}, "camera.distortion.k1"),
    ],
)
def test_inconsistent_camera_is_rejected_naming_the_field(
    kwargs: dict[str, float], field: str
) -> None:
    with pytest.raises(GeolocationError) as info:
        Intrinsics.from_request(1920, 1080, **kwargs)
    assert info.value.field == field
    assert field in str(info.value)


def test_bad_image_size_is_rejected() -> None:
    with pytest.raises(GeolocationError, match=r"camera\.width"):
        Intrinsics.from_request(0, 1080, hfov=60.0)


def test_undistortion_inverts_distortion() -> None:
    k = (-0.28, 0.09, 0.0012, -0.0008, -0.012)
    rng = np.random.default_rng(3)
    x = rng.uniform(-0.8, 0.8, 5000)
    y = rng.uniform(-0.5, 0.5, 5000)
    xd, yd = distort(x, y, k)
    xu, yu, ok = undistort(xd, yd, k)
    assert ok.all()
    np.testing.assert_allclose(xu, x, atol=1e-11)
    np.testing.assert_allclose(yu, y, atol=1e-11)
    xs, ys = undistort_scalar(float(xd[0]), float(yd[0]), k)
    assert (xs, ys) == pytest.approx((x[0], y[0]), abs=1e-11)


def test_undistortion_reports_pixels_beyond_the_fold() -> None:
    k = (-0.5, 0.0, 0.0, 0.0, 0.0)  # r (1 - 0.5 r^2) peaks at 0.544
    _, _, ok = undistort(np.array([0.2, 0.9]), np.array([0.0, 0.0]), k)
    assert ok.tolist() == [True, False]
    with pytest.raises(GeolocationError, match="did not converge"):
        undistort_scalar(0.9, 0.0, k)
