"""Terrain: a generated GeoTIFF with a hill, generated SRTM tiles, the first-crossing march."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from copbridge.geo import (
    GeoTiffTerrain,
    Intrinsics,
    Pose,
    SrtmTiles,
    Terrain,
    load_egm96,
    locate_pixel,
    resolve_platform_hae,
    scalar,
)
from copbridge.geo.ellipsoid import ecef_to_geodetic, geodetic_to_ecef
from copbridge.geo.terrain import intersect_terrain, srtm_tile_name

HILL_LAT, HILL_LON = 41.02, -104.0
VALLEY, PEAK = 1000.0, 1300.0  # m MSL
SENSOR_LAT = 41.0  # 2.2 km south of the hill top


def _hill_tif(path: Path) -> Path:
    """A 0.0002 deg DEM: flat valley at 1000 m with a Gaussian hill (peak 1300 m, sigma 300 m)."""
    west, north, step, n = -104.1, 41.15, 0.0002, 1000
    lat = north - (np.arange(n) + 0.5) * step
    lon = west + (np.arange(n) + 0.5) * step
    dy = (lat[:, None] - HILL_LAT) * 111_000.0
    dx = (lon[None, :] - HILL_LON) * 111_000.0 * math.cos(math.radians(HILL_LAT))
    z = VALLEY + (PEAK - VALLEY) * np.exp(-(dx**2 + dy**2) / (2 * 300.0**2))
    z = z.astype(np.float32)
    z[:10, :10] = -9999.0  # a nodata corner
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=n,
        height=n,
        count=1,
        dtype="float32",
        crs="EPSG:4326",
        transform=Affine(step, 0.0, west, 0.0, -step, north),
        nodata=-9999.0,
    ) as ds:
        ds.write(z, 1)
    return path


@pytest.fixture
def hill(tmp_path: Path) -> GeoTiffTerrain:
    return GeoTiffTerrain(_hill_tif(tmp_path / "hill.tif"))


def test_geotiff_heights_posting_and_nodata(hill: GeoTiffTerrain) -> None:
    assert isinstance(hill, Terrain)
    assert float(hill.height_msl(HILL_LAT, HILL_LON)[0]) == pytest.approx(PEAK, abs=1.0)
    assert float(hill.height_msl(40.96, -104.02)[0]) == pytest.approx(VALLEY, abs=0.01)
    assert np.isnan(hill.height_msl(41.149, -104.099)[0])  # nodata
    assert np.isnan(hill.height_msl(10.0, 10.0)[0])  # outside
    assert hill.covers([41.0, 10.0], [-104.0, 10.0]).tolist() == [True, False]
    assert hill.posting_m == pytest.approx(
        0.0002 * 111_320 * math.cos(math.radians(41.15)), rel=1e-3
    )


def _ray_at(h_msl_at_hill: float) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """A ray from 1400 m MSL south of the hill, heading north, passing over the hill top's
    position at the given height."""
    g = load_egm96()
    n = float(g.undulation(SENSOR_LAT, HILL_LON))
    s = np.array(geodetic_to_ecef(SENSOR_LAT, HILL_LON, 1400.0 + n))
    p = np.array(geodetic_to_ecef(HILL_LAT, HILL_LON, h_msl_at_hill + n))
    d = (p - s) / np.linalg.norm(p - s)
    return (float(s[0]), float(s[1]), float(s[2])), (float(d[0]), float(d[1]), float(d[2]))


def test_a_ray_grazing_the_hill_stops_on_the_hill_not_the_valley_behind(
    hill: GeoTiffTerrain,
) -> None:
    g = load_egm96()
    s, d = _ray_at(PEAK - 3.0)  # passes 3 m below the summit
    t = intersect_terrain(s, d, hill, g)
    assert t is not None
    p = np.array(s) + t * np.array(d)
    lat, lon, h = ecef_to_geodetic(*p)
    assert float(lat) < HILL_LAT + 0.001  # on the near side of the summit, not beyond
    ground = float(g.msl_to_hae(lat, lon, hill.height_msl(lat, lon))[0])
    assert float(h) == pytest.approx(ground, abs=0.01)  # on the surface (bisection to 1 mm)
    assert float(g.hae_to_msl(lat, lon, h)) > PEAK - 60.0

    s, d = _ray_at(PEAK + 3.0)  # clears the summit by 3 m: lands in the valley behind
    t = intersect_terrain(s, d, hill, g)
    assert t is not None
    lat, _, h = ecef_to_geodetic(*(np.array(s) + t * np.array(d)))
    assert float(lat) > HILL_LAT + 0.01
    assert float(g.hae_to_msl(lat, HILL_LON, h)) == pytest.approx(VALLEY, abs=0.05)


def test_locate_pixel_uses_the_terrain_and_reports_it(hill: GeoTiffTerrain) -> None:
    g = load_egm96()
    n = float(g.undulation(SENSOR_LAT, HILL_LON))
    intr = Intrinsics.from_request(1920, 1080, hfov=10.0)
    # looking north, 3 deg down: over flat ground the hit would be 7.6 km away
    pose = Pose(SENSOR_LAT, HILL_LON, 1400.0 + n, gimbal_elevation=-3.0)
    f = locate_pixel(intr, pose, 960, 540, terrain=hill)
    assert f.ground == "terrain"
    assert f.slant_range < 2300.0
    assert float(g.hae_to_msl(f.lat, f.lon, f.hae)) > VALLEY + 50.0
    # looking south, far out of the DEM before reaching the ground: falls back to the ellipsoid
    away = locate_pixel(
        intr,
        Pose(SENSOR_LAT, HILL_LON, 1400.0 + n, gimbal_azimuth=180.0, gimbal_elevation=-2.0),
        960,
        540,
        terrain=hill,
    )
    assert away.ground == "ellipsoid"


def _write_hgt(directory: Path, lat0: int, lon0: int, n: int) -> np.ndarray:
    """A tile whose posts are 1000 + row + 2 col (integers, so bilinear is exact), one void."""
    rows, cols = np.mgrid[0:n, 0:n]
    z = (1000 + rows + 2 * cols).astype(">i2")
    z[100, 100] = -32768
    (directory / srtm_tile_name(lat0, lon0)).write_bytes(z.tobytes())
    return np.asarray(z)


def test_srtm_tiles_read_bilinear_heights_voids_and_missing_tiles(tmp_path: Path) -> None:
    _write_hgt(tmp_path, 41, -105, 1201)  # 3 arc-second tile
    assert srtm_tile_name(41, -105) == "N41W105.hgt"
    assert srtm_tile_name(-34, 18) == "S34E018.hgt"
    tiles = SrtmTiles(tmp_path)
    assert isinstance(tiles, Terrain)

    def expected(lat: float, lon: float) -> float:
        return 1000.0 + (42.0 - lat) * 1200 + 2.0 * (lon + 105.0) * 1200

    lat = np.array([41.5, 41.9, 41.0001, 41.25])
    lon = np.array([-104.5, -104.99, -104.0001, -104.123])
    np.testing.assert_allclose(
        tiles.height_msl(lat, lon),
        [expected(a, b) for a, b in zip(lat, lon, strict=True)],
        atol=1e-3,
    )
    void_lat, void_lon = 42.0 - 100 / 1200, -105.0 + 100 / 1200
    assert np.isnan(tiles.height_msl(void_lat, void_lon)[0])
    assert np.isnan(tiles.height_msl(40.5, -104.5)[0])  # no tile
    assert tiles.covers([41.5, 40.5], [-104.5, -104.5]).tolist() == [True, False]
    # 3" posts: 92.1 m north-south, 69.3 m east-west at 42 N
    assert tiles.posting_m == pytest.approx(
        3 / 3600 * 111_320 * math.cos(math.radians(42.0)), rel=1e-3
    )


def test_srtm_one_arc_second_tile_and_ray_crossing(tmp_path: Path) -> None:
    n = 3601
    flat = np.full((n, n), 1500, dtype=">i2")
    (tmp_path / "N41W105.hgt").write_bytes(flat.tobytes())
    tiles = SrtmTiles(tmp_path)
    assert tiles.posting_m < 31.0
    g = load_egm96()
    intr = Intrinsics.from_request(1920, 1080, hfov=30.0)
    und = float(g.undulation(41.5, -104.5))
    f = locate_pixel(
        intr, Pose(41.5, -104.5, 2500.0 + und, gimbal_elevation=-45.0), 960, 540, terrain=tiles
    )
    assert f.ground == "terrain"
    assert float(g.hae_to_msl(f.lat, f.lon, f.hae)) == pytest.approx(1500.0, abs=0.01)
    assert f.slant_range == pytest.approx(1000.0 * math.sqrt(2.0), rel=1e-3)


def test_a_ray_that_enters_the_model_below_its_ground_is_not_put_on_the_model_edge(
    tmp_path: Path,
) -> None:
    """The platform is south of the only tile, its height above ground taken over 0 HAE (no
    model under it), below the tile's 1,900 m: the ray meets the ground outside the model.
    Before, the first covered sample counted as a crossing and the point landed on the tile's
    southern edge, 2.3 km from the flat-ground answer, with a terrain-sized CE90."""
    (tmp_path / "N41W105.hgt").write_bytes(np.full((1201, 1201), 1900, dtype=">i2").tobytes())
    tiles = SrtmTiles(tmp_path)
    intr = Intrinsics.from_request(1920, 1080, hfov=60.0)
    platform = resolve_platform_hae(500.0, "agl", 40.995, -104.5, terrain=tiles)
    assert not platform.absolute
    pose = Pose(40.995, -104.5, platform.hae, gimbal_elevation=-10.0)
    line = scalar.ray(intr, pose, 960, 540)
    assert intersect_terrain(line.s, line.d, tiles, load_egm96()) is None
    fix = locate_pixel(
        intr,
        pose,
        960,
        540,
        terrain=tiles,
        platform_agl=platform.agl,
        platform_absolute=platform.absolute,
    )
    assert fix.ground == "agl"
    assert fix.lat == pytest.approx(41.020566, abs=2e-5)  # 500 m / tan 10 deg north


def test_agl_with_a_terrain_model_that_misses_the_platform_answers_agl_not_terrain(
    tmp_path: Path,
) -> None:
    """A GeoTIFF cut around the area watched, the drone just outside it reporting AGL: its HAE
    rests on an assumed 0 HAE ground, no height to march the model from (the hit was 470 m off
    and reported absolute). The answer is the AGL one, relative in height."""
    path = tmp_path / "flat100.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=200,
        height=200,
        count=1,
        dtype="float32",
        crs="EPSG:4326",
        transform=Affine(0.001, 0.0, -104.6, 0.0, -0.001, 41.2),
        nodata=-9999.0,
    ) as ds:
        ds.write(np.full((200, 200), 100.0, dtype=np.float32), 1)
    cut = GeoTiffTerrain(path)
    lat, lon = 40.999, -104.5  # 110 m south of the model's edge
    height = resolve_platform_hae(500.0, "agl", lat, lon, terrain=cut)
    assert not height.absolute
    intr = Intrinsics.from_request(1920, 1080, hfov=10.0)
    pose = Pose(lat, lon, height.hae, gimbal_elevation=-10.0)  # looking north, into the model
    agl, absolute = height.agl, height.absolute
    got = locate_pixel(
        intr, pose, 960, 540, terrain=cut, platform_agl=agl, platform_absolute=absolute
    )
    flat = locate_pixel(intr, pose, 960, 540, platform_agl=agl, platform_absolute=absolute)
    assert got.ground == "agl"
    assert not got.height_absolute
    assert (got.lat, got.lon) == (flat.lat, flat.lon)
