"""Geolocation benchmark: our vectorised and scalar paths against pymap3d in the same run.

Run: python bench/bench_geo.py  (prints rates, our time / pymap3d's, and the scalar median)
Targets (issue 3): >= 1,000,000 fixes/s location only, >= 200,000/s with CE90/LE90,
our full chain no slower than pymap3d's bare ray-ellipsoid intersection, scalar <= 50 us.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import pymap3d.los

from copbridge.geo import Intrinsics, Pose, PoseArrays, locate, locate_pixel

N = 100_000


def best_of(fn: Callable[[], object], repeat: int = 5) -> float:
    """Shortest wall time of ``repeat`` runs (seconds)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    rng = np.random.default_rng(1)
    cam = Intrinsics.from_request(1920, 1080, hfov=40.0)
    poses = PoseArrays.of(
        lat=rng.uniform(-60, 60, N),
        lon=rng.uniform(-180, 180, N),
        hae=rng.uniform(300, 5000, N),
        heading=rng.uniform(0, 360, N),
        pitch=rng.normal(0, 3, N),
        roll=rng.normal(0, 5, N),
        gimbal_azimuth=rng.uniform(-180, 180, N),
        gimbal_elevation=rng.uniform(-90, -25, N),
        gimbal_roll=np.zeros(N),
    )
    u = rng.uniform(0, 1920, N)
    v = rng.uniform(0, 1080, N)
    ground = np.zeros(N)

    locate(cam, poses, u, v, ground)  # warm-up (tables, caches)
    t_loc = best_of(lambda: locate(cam, poses, u, v, ground, with_uncertainty=False))
    t_unc = best_of(lambda: locate(cam, poses, u, v, ground, with_uncertainty=True))
    fixes = locate(cam, poses, u, v, ground)
    sampled = int(fixes.sampled.sum())

    # pymap3d: the bare ray-ellipsoid intersection for the same lines of sight (its inputs are
    # the final azimuth and tilt from vertical, which our chain has to compute first)
    from copbridge.geo.core import solve_rays

    xn = (u - cam.cx) / cam.fx
    yn = (v - cam.cy) / cam.fy
    angles = np.stack(
        [
            poses.heading,
            poses.pitch,
            poses.roll,
            poses.gimbal_azimuth,
            poses.gimbal_elevation,
            poses.gimbal_roll,
        ]
    )
    geo = solve_rays(xn, yn, poses.lat, poses.lon, poses.hae, angles, ground)
    dn, de, dd = geo.d_ned
    az = np.degrees(np.arctan2(de, dn))
    tilt = np.degrees(np.arctan2(np.hypot(dn, de), dd))
    t_p3d = best_of(
        lambda: pymap3d.los.lookAtSpheroid(poses.lat, poses.lon, poses.hae, az, tilt), 3
    )
    plat, plon, _ = pymap3d.los.lookAtSpheroid(poses.lat, poses.lon, poses.hae, az, tilt)
    agree = (
        np.nanmax(np.hypot(plat - fixes.lat, (plon - fixes.lon) * np.cos(np.radians(plat))))
        * 111_000
    )

    # scalar path, one detection per call as the API does it
    pose = Pose(41.1438, -104.8056, 2920.6, 201.27, 4.18, -4.26, 266.41, -26.60, 0.0)
    cam1 = Intrinsics.from_request(1920, 1080, hfov=18.65, vfov=10.49)

    def scalar_us(with_unc: bool) -> float:
        samples = []
        for _ in range(3000):
            t0 = time.perf_counter()
            locate_pixel(cam1, pose, 972.0, 600.0, ground_height=1839.6, with_uncertainty=with_unc)
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples) * 1e6

    s_loc = scalar_us(False)
    s_unc = scalar_us(True)

    print(f"{N:,} detections in one vectorised call")
    print(f"  location only      {t_loc * 1e3:8.1f} ms  {N / t_loc:12,.0f} /s", end="")
    print("   (target >= 1,000,000 /s)")
    print(f"  with CE90/LE90     {t_unc * 1e3:8.1f} ms  {N / t_unc:12,.0f} /s", end="")
    print(f"   (target >=   200,000 /s)  [{sampled} grazing rays sampled]")
    print(
        f"  pymap3d lookAtSpheroid (bare intersection, same rays) {t_p3d * 1e3:8.1f} ms"
        f"  {N / t_p3d:12,.0f} /s"
    )
    print(
        f"  ratio ours / pymap3d: location {t_loc / t_p3d:.3f}, with CE90/LE90 {t_unc / t_p3d:.3f}"
        "   (target <= 1.0)"
    )
    print(f"  max disagreement with pymap3d: {agree:.2e} m")
    print("scalar path, one detection per call (median of 3000)")
    print(f"  location only      {s_loc:6.1f} us")
    print(f"  with CE90/LE90     {s_unc:6.1f} us   (target <= 50 us)")


if __name__ == "__main__":
    main()
