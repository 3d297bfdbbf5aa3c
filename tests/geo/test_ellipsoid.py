"""WGS84 conversions against pymap3d, and the raised-ellipsoid ray intersection."""

from __future__ import annotations

import numpy as np
import pymap3d
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from copbridge.geo.ellipsoid import (
    WGS84_A,
    WGS84_B,
    ecef_to_geodetic,
    geodetic_to_ecef,
    intersect_raised_ellipsoid,
)


def test_geodetic_to_ecef_matches_pymap3d() -> None:
    rng = np.random.default_rng(1)
    lat = rng.uniform(-90, 90, 2000)
    lon = rng.uniform(-180, 180, 2000)
    h = rng.uniform(-1000, 100_000, 2000)
    ours = np.array(geodetic_to_ecef(lat, lon, h))
    theirs = np.array(pymap3d.geodetic2ecef(lat, lon, h))
    assert np.abs(ours - theirs).max() < 1e-6


def test_ecef_to_geodetic_is_exact_to_a_micrometre_including_the_poles() -> None:
    rng = np.random.default_rng(2)
    lat = np.concatenate([rng.uniform(-90, 90, 5000), [90.0, -90.0, 0.0, 89.9999999]])
    lon = np.concatenate([rng.uniform(-180, 180, 5000), [0.0, 45.0, 180.0, -10.0]])
    h = np.concatenate([rng.uniform(-5000, 1_000_000, 5000), [10.0, -3.0, 0.0, 500.0]])
    x, y, z = geodetic_to_ecef(lat, lon, h)
    lat2, lon2, h2 = ecef_to_geodetic(x, y, z)
    back = np.array(geodetic_to_ecef(lat2, lon2, h2))
    assert np.abs(back - np.array([x, y, z])).max() < 1e-6
    assert np.abs(h2 - h).max() < 1e-6
    plat, _, ph = pymap3d.ecef2geodetic(x, y, z)
    assert np.abs(plat - lat2).max() < 1e-7  # pymap3d itself is good to ~1 cm here
    assert np.abs(ph - h2).max() < 1e-3


@settings(max_examples=200, deadline=None)
@given(
    hnp.arrays(np.float64, 3, elements=st.floats(-1.0, 1.0)),
    st.floats(0.0, 9000.0),
    st.floats(100.0, 50_000.0),
)
def test_ray_hits_the_raised_ellipsoid_at_its_height(
    direction: np.ndarray, h: float, above: float
) -> None:
    # a sensor straight above a point at height h + above, looking at the ellipsoid centre
    # region: the hit lies on (a + h, b + h)
    lat, lon = 37.0, -122.0
    s = np.array(geodetic_to_ecef(lat, lon, h + above), dtype=np.float64)
    d = -s / np.linalg.norm(s) + 0.2 * direction
    sx, sy, sz = (np.array([c]) for c in s)
    dx, dy, dz = (np.array([c]) for c in d)
    t, qc, _ = intersect_raised_ellipsoid(sx, sy, sz, dx, dy, dz, np.array([h]))
    assert qc[0] > 0
    p = s + t[0] * d
    a, b = WGS84_A + h, WGS84_B + h
    assert abs((p[0] ** 2 + p[1] ** 2) / a**2 + p[2] ** 2 / b**2 - 1.0) < 1e-12
    _, _, hp = ecef_to_geodetic(*p)
    assert abs(hp - h) < 0.013
