"""Random but plausible camera geometries shared by the geolocation tests."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from copbridge.geo import Intrinsics, Pose, ray_ned


@dataclass(frozen=True)
class Scene:
    """A camera looking at the ground at a known depression angle."""

    intrinsics: Intrinsics
    pose: Pose
    u: float
    v: float
    ground_hae: float


def random_scenes(
    rng: np.random.Generator, n: int, *, min_depression_deg: float = 15.0
) -> list[Scene]:
    """n scenes: sensor 50 m - 6 km above the ground, boresight 15-90 deg below the horizon
    (platform angles small, the gimbal doing the pointing), pixels anywhere in the image."""
    scenes: list[Scene] = []
    while len(scenes) < n:
        width, height = 1920, 1080
        hfov = rng.uniform(5.0, 70.0)
        intr = Intrinsics.from_request(width, height, hfov=hfov)
        ground = rng.uniform(-50.0, 3000.0)
        pose = Pose(
            lat=rng.uniform(-70.0, 70.0),
            lon=rng.uniform(-180.0, 180.0),
            hae=ground + rng.uniform(50.0, 6000.0),
            heading=rng.uniform(0.0, 360.0),
            pitch=rng.normal(0.0, 3.0),
            roll=rng.normal(0.0, 5.0),
            gimbal_azimuth=rng.uniform(-180.0, 180.0),
            gimbal_elevation=-rng.uniform(min_depression_deg, 90.0),
            gimbal_roll=rng.normal(0.0, 2.0),
        )
        u = rng.uniform(0, width)
        v = rng.uniform(0, height)
        # keep only rays that clearly point down to the ground (the edge of a wide FOV may not)

        down = ray_ned(intr, pose, u, v)[2]
        dip = math.degrees(math.acos(6.371e6 / (6.371e6 + pose.hae - ground)))
        if math.degrees(math.asin(down)) < max(min_depression_deg * 0.5, dip + 1.0):
            continue
        scenes.append(Scene(intr, pose, u, v, ground))
    return scenes
