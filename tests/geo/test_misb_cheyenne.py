"""Real MISB ST 0601 data (Esri Cheyenne): our geolocation against the encoder's frame centre.

data/misb/cheyenne_0601_decoded.csv (see its README): 407 packets, 2.1-3.1 km slant range.
"""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from copbridge.geo import Intrinsics, Pose, load_egm96, locate
from copbridge.geo.ellipsoid import enu_basis, geodetic_to_ecef

DATA = Path(__file__).parent / "data" / "misb" / "cheyenne_0601_decoded.csv"


def _rows() -> list[dict[str, float]]:
    with DATA.open(newline="") as fh:
        return [
            {k: float(v) for k, v in row.items() if k != "precision_time_stamp_utc"}
            for row in csv.DictReader(fh)
        ]


def _horizontal(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    d = np.array(geodetic_to_ecef(lat2, lon2, 0.0)) - np.array(geodetic_to_ecef(lat1, lon1, 0.0))
    e, n, _ = enu_basis(lat1, lon1)
    return math.hypot(float(e @ d), float(n @ d))


def _residuals(
    heights: str, order: tuple[int, ...] = (1, 2, 3, 4)
) -> tuple[np.ndarray, np.ndarray]:
    """Frame-centre residuals (m) and corner residuals (m, [packet, corner]): our image corners
    UL, UR, LR, LL against the reported corners numbered ``order``."""
    geoid = load_egm96()
    centre, corners = [], []
    for r in _rows():
        # a virtual pinhole image with the reported HFOV/VFOV (pixel size is irrelevant)
        width = 1000
        height = (
            width
            * math.tan(math.radians(r["vfov_deg"] / 2))
            / math.tan(math.radians(r["hfov_deg"] / 2))
        )
        cam = Intrinsics.from_request(
            width, round(height), hfov=r["hfov_deg"], vfov=r["vfov_deg"], cy=height / 2
        )
        h_sensor = r["sensor_true_alt_msl_m"]
        h_ground = r["frame_center_elev_msl_m"]
        if heights == "hae":  # both MSL heights through EGM96
            h_sensor = float(geoid.msl_to_hae(r["sensor_lat_deg"], r["sensor_lon_deg"], h_sensor))
            h_ground = float(
                geoid.msl_to_hae(r["frame_center_lat_deg"], r["frame_center_lon_deg"], h_ground)
            )
        pose = Pose(
            r["sensor_lat_deg"],
            r["sensor_lon_deg"],
            h_sensor,
            r["platform_heading_deg"],
            r["platform_pitch_deg"],
            r["platform_roll_deg"],
            r["sensor_rel_az_deg"],
            r["sensor_rel_el_deg"],
            r["sensor_rel_roll_deg"],
        )
        # centre, then the image corners upper-left, upper-right, lower-right, lower-left
        u = [cam.cx, 0.0, width, width, 0.0]
        v = [cam.cy, 0.0, 0.0, height, height]
        f = locate(cam, pose, u, v, h_ground, with_uncertainty=False)
        assert f.ok.all()
        lat0, lon0 = r["frame_center_lat_deg"], r["frame_center_lon_deg"]
        centre.append(_horizontal(lat0, lon0, float(f.lat[0]), float(f.lon[0])))
        corners.append(
            [
                _horizontal(
                    lat0 + r[f"corner{k}_dlat_deg"],
                    lon0 + r[f"corner{k}_dlon_deg"],
                    float(f.lat[i]),
                    float(f.lon[i]),
                )
                for i, k in enumerate(order, start=1)
            ]
        )
    return np.array(centre), np.array(corners)


@pytest.mark.parametrize("heights", ["msl", "hae"])
def test_image_centre_reproduces_the_reported_frame_centre(heights: str) -> None:
    centre, _ = _residuals(heights)
    assert len(centre) == 407
    assert np.median(centre) <= 10.0
    assert np.percentile(centre, 90) <= 30.0


def test_image_corners_match_the_reported_corners_in_ul_ur_lr_ll_order() -> None:
    _, corners = _residuals("hae")
    # the encoder's corner model differs from a pure pinhole a little (its corners are turned
    # about 4-5 deg about the frame centre relative to the ST 0601 chain), so corners reach
    # ~1 % of range at the median (README: "within ~30 m median"), not the centre's 0.3 %
    assert np.median(corners) <= 35.0
    assert np.percentile(corners, 90) <= 125.0
    for i in range(4):
        assert np.median(corners[:, i]) <= 35.0
    # and reported corners 1-4 are UL, UR, LR, LL: any other assignment is far worse
    for order in itertools.permutations((1, 2, 3, 4)):
        if order != (1, 2, 3, 4):
            _, other = _residuals("hae", order)
            assert np.median(other.max(axis=1)) > 3 * np.median(corners.max(axis=1))
