"""The EGM96 grid shipped with the package: known undulations, wrap-around, MSL <-> HAE."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from copbridge.geo import load_egm96

# NGA's EGM96 test points (outintpt.dat of the official INTPT program): lat, lon, N (m)
NGA_POINTS = [
    (38.6281550, 269.7791550, -31.629),
    (-14.6212170, 305.0211140, -2.966),
    (46.8743190, 102.4487290, -43.572),
    (-23.6174460, 133.8747120, 15.868),
    (38.6254730, 359.9995000, 50.065),
    (-0.4667440, 0.0023000, 17.330),
]


def test_undulation_near_cheyenne_is_minus_15_8_m() -> None:
    assert float(load_egm96().undulation(41.14, -104.81)) == pytest.approx(-15.8, abs=0.5)


@pytest.mark.parametrize(("lat", "lon", "n"), NGA_POINTS)
def test_undulation_matches_nga_test_points(lat: float, lon: float, n: float) -> None:
    assert float(load_egm96().undulation(lat, lon)) == pytest.approx(n, abs=0.5)


def test_vectorised_lookup_poles_and_longitude_wrap() -> None:
    g = load_egm96()
    lat = np.array([p[0] for p in NGA_POINTS])
    lon = np.array([p[1] for p in NGA_POINTS])
    np.testing.assert_allclose(g.undulation(lat, lon), [p[2] for p in NGA_POINTS], atol=0.5)
    assert float(g.undulation(90.0, 0.0)) == pytest.approx(13.606, abs=0.05)
    assert float(g.undulation(-90.0, 0.0)) == pytest.approx(-29.534, abs=0.05)
    assert g.wraps
    # between the last column (179.75) and the first (-180 == 180): continuous across the seam
    west, east = g.undulation(10.0, [179.9, -179.9])
    seam = g.undulation(10.0, [180.0, -180.0])
    assert seam[0] == seam[1]
    assert min(west, east) - 0.5 <= seam[0] <= max(west, east) + 0.5
    assert float(g.undulation(10.0, 179.9)) == float(g.undulation(10.0, -180.1))


def test_msl_and_hae_convert_both_ways() -> None:
    g = load_egm96()
    h = g.msl_to_hae(41.14, -104.81, 1855.4)
    assert float(h) == pytest.approx(1855.4 - 15.8, abs=0.5)
    assert float(g.hae_to_msl(41.14, -104.81, h)) == pytest.approx(1855.4, abs=1e-9)


@given(
    lat=st.floats(min_value=-90, max_value=90, allow_nan=False),
    lon=st.floats(min_value=-540, max_value=540, allow_nan=False),
)
def test_scalar_undulation_equals_the_vectorised_one(lat: float, lon: float) -> None:
    geoid = load_egm96()
    assert geoid.undulation_at(lat, lon) == pytest.approx(
        float(geoid.undulation(lat, lon)), abs=1e-9
    )
