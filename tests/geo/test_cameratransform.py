"""Independent cross-check against cameratransform (flat local model, short range)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from copbridge.geo import Intrinsics, Pose, locate
from copbridge.geo.ellipsoid import geodetic_to_ecef

ct = pytest.importorskip(
    "cameratransform",
    reason="cameratransform is a test-only dependency (pip install --no-deps cameratransform)",
)

SCENES = [
    # heading, tilt (cameratransform: 0 = straight down, 90 = horizon), roll, height
    (0.0, 60.0, 0.0, 100.0),
    (90.0, 45.0, 0.0, 150.0),
    (200.0, 70.0, 0.0, 80.0),
    (30.0, 50.0, 10.0, 120.0),
    (300.0, 30.0, -15.0, 300.0),
    (135.0, 10.0, 5.0, 500.0),
]


@pytest.mark.parametrize(("heading", "tilt", "roll", "height"), SCENES)
def test_short_range_fixes_agree_with_cameratransform_within_0_3_percent_of_range(
    heading: float, tilt: float, roll: float, height: float
) -> None:
    width, img_h, f = 1920, 1080, 1400.0
    cam = ct.Camera(
        ct.RectilinearProjection(focallength_px=f, image=(width, img_h)),
        ct.SpatialOrientation(
            elevation_m=height, tilt_deg=tilt, heading_deg=heading, roll_deg=roll
        ),
    )
    cam.setGPSpos(41.0, -104.0, height)
    pts = np.array(
        [[960, 540], [100, 900], [1800, 700], [960, 1000], [50, 600], [1900, 1070]], float
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = cam.gpsFromImage(pts, Z=0)
    # same camera in MISB terms: a fixed camera (platform angles 0), gimbal absolute;
    # cameratransform's roll turns the other way round
    pose = Pose(
        41.0,
        -104.0,
        height,
        gimbal_azimuth=heading,
        gimbal_elevation=tilt - 90.0,
        gimbal_roll=-roll,
    )
    ours = locate(
        Intrinsics(width, img_h, f, f, width / 2, img_h / 2), pose, pts[:, 0], pts[:, 1], 0.0
    )
    assert ours.ok.all()
    a = np.array(geodetic_to_ecef(theirs[:, 0], theirs[:, 1], 0.0))
    b = np.array(geodetic_to_ecef(ours.lat, ours.lon, 0.0))
    rel = np.linalg.norm(a - b, axis=0) / ours.slant_range
    assert rel.max() <= 0.003
