"""Terrain models (GeoTIFF via rasterio, SRTM .hgt tiles) and the ray-terrain intersection.

Heights are metres above mean sea level (EGM96) unless a model says otherwise. The ray is
marched in steps no longer than the DEM posting, the first crossing taken, then bisected.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import cachetools
import numpy as np
import numpy.typing as npt

from copbridge.geo.ellipsoid import WGS84_A, WGS84_E2, FloatArray, ecef_to_geodetic
from copbridge.geo.errors import MIN_CLEARANCE_M, GeolocationError, RayStatus
from copbridge.geo.geoid import Geoid, load_egm96

BoolArray = npt.NDArray[np.bool_]

_M_PER_DEG_LAT = 110_574.0  # shortest metres per degree of latitude (at the equator)
_M_PER_DEG_LON = 111_320.0  # metres per degree of longitude at the equator
LOWEST_GROUND_HAE = -600.0
"""No land is lower (Dead Sea shore -430 m MSL, geoid down to -107 m): marching stops here."""
DEFAULT_MAX_RANGE_M = 100_000.0
"""Longest line of sight marched over terrain."""
BISECTION_TOL_M = 1e-3


@runtime_checkable
class Terrain(Protocol):
    """A digital elevation model: vectorised heights above mean sea level (EGM96)."""

    @property
    def posting_m(self) -> float:
        """Smallest ground distance between adjacent height posts (the march step)."""
        ...

    def height_msl(self, lat: npt.ArrayLike, lon: npt.ArrayLike) -> FloatArray:
        """Bilinear height (m MSL) at each point; NaN where the model has no data."""
        ...

    def covers(self, lat: npt.ArrayLike, lon: npt.ArrayLike) -> BoolArray:
        """True where the model has a height."""
        ...


def _bilinear(grid: npt.NDArray[np.floating], row: FloatArray, col: FloatArray) -> FloatArray:
    """Bilinear lookup at fractional (row, col) of post centres; NaN outside or near voids."""
    rows, cols = grid.shape
    inside = (row >= 0.0) & (row <= rows - 1) & (col >= 0.0) & (col <= cols - 1)
    r = np.where(inside, row, 0.0)
    c = np.where(inside, col, 0.0)
    r0 = np.minimum(r.astype(np.intp), max(rows - 2, 0))
    c0 = np.minimum(c.astype(np.intp), max(cols - 2, 0))
    r1 = np.minimum(r0 + 1, rows - 1)
    c1 = np.minimum(c0 + 1, cols - 1)
    wr = r - r0
    wc = c - c0
    out = (grid[r0, c0] * (1.0 - wc) + grid[r0, c1] * wc) * (1.0 - wr) + (
        grid[r1, c0] * (1.0 - wc) + grid[r1, c1] * wc
    ) * wr
    return np.where(inside, out, np.nan).astype(np.float64)


class GeoTiffTerrain:
    """A single-band GeoTIFF DEM read into memory through rasterio.

    Any CRS: geographic rasters are indexed directly, projected ones through rasterio's
    coordinate transform. ``nodata`` becomes NaN. ``heights="hae"`` for DEMs referenced to the
    ellipsoid (converted to MSL with ``geoid``, EGM96 by default).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        heights: Literal["msl", "hae"] = "msl",
        geoid: Geoid | None = None,
        band: int = 1,
    ) -> None:
        import rasterio

        with rasterio.open(path) as ds:
            data = ds.read(band, masked=True).astype(np.float64)
            self._grid: FloatArray = np.asarray(data.filled(np.nan), dtype=np.float64)
            self._inverse = ~ds.transform
            self._crs = ds.crs
            res_x, res_y = ds.res
            bounds = ds.bounds
        self._geographic = bool(self._crs is None or self._crs.is_geographic)
        if self._geographic:
            max_lat = min(max(abs(bounds.bottom), abs(bounds.top)), 89.0)
            self._posting = float(
                min(
                    res_y * _M_PER_DEG_LAT,
                    res_x * _M_PER_DEG_LON * math.cos(math.radians(max_lat)),
                )
            )
        else:
            unit = float(self._crs.linear_units_factor[1])
            self._posting = float(min(res_x, res_y) * unit)
        self._heights = heights
        self._geoid = geoid if geoid is not None or heights == "msl" else load_egm96()

    @property
    def posting_m(self) -> float:
        """Smallest distance between posts in metres."""
        return self._posting

    def height_msl(self, lat: npt.ArrayLike, lon: npt.ArrayLike) -> FloatArray:
        """Bilinear height (m MSL), NaN outside the raster or next to nodata."""
        lat_a = np.atleast_1d(np.asarray(lat, dtype=np.float64))
        lon_a = np.atleast_1d(np.asarray(lon, dtype=np.float64))
        if self._geographic:
            x, y = lon_a, lat_a
        else:
            from rasterio.warp import transform

            xs, ys = transform("EPSG:4326", self._crs, lon_a.ravel(), lat_a.ravel())
            x = np.asarray(xs).reshape(lon_a.shape)
            y = np.asarray(ys).reshape(lat_a.shape)
        inv = self._inverse
        col = inv.a * x + inv.b * y + inv.c - 0.5  # post centres are at pixel + 0.5
        row = inv.d * x + inv.e * y + inv.f - 0.5
        h = _bilinear(self._grid, row, col)
        if self._heights == "hae":
            assert self._geoid is not None
            h = self._geoid.hae_to_msl(lat_a, lon_a, h)
        return h

    def covers(self, lat: npt.ArrayLike, lon: npt.ArrayLike) -> BoolArray:
        """True where the raster has a height."""
        return ~np.isnan(self.height_msl(lat, lon))


_TILE_NAME = re.compile(r"^([NS])(\d{2})([EW])(\d{3})\.hgt$", re.IGNORECASE)
_SRTM_VOID = -32768


def srtm_tile_name(lat_floor: int, lon_floor: int) -> str:
    """The .hgt file name of the 1-degree tile whose south-west corner is given (N41W105.hgt)."""
    ns = "N" if lat_floor >= 0 else "S"
    ew = "E" if lon_floor >= 0 else "W"
    return f"{ns}{abs(lat_floor):02d}{ew}{abs(lon_floor):03d}.hgt"


class SrtmTiles:
    """A directory of SRTM ``.hgt`` tiles (1" 3601x3601 or 3" 1201x1201 big-endian int16).

    Posts sit on whole arc-seconds, rows from north to south; -32768 marks voids (NaN).
    Decoded tiles are kept in a small LRU cache.
    """

    def __init__(self, directory: str | os.PathLike[str], *, cache_tiles: int = 16) -> None:
        self._dir = Path(directory)
        self._files: dict[tuple[int, int], Path] = {}
        posting = math.inf
        for path in self._dir.iterdir():
            m = _TILE_NAME.match(path.name)
            if not m:
                continue
            lat0 = int(m.group(2)) * (1 if m.group(1).upper() == "N" else -1)
            lon0 = int(m.group(4)) * (1 if m.group(3).upper() == "E" else -1)
            self._files[(lat0, lon0)] = path
            n = _tile_size(path)
            step = 1.0 / (n - 1)
            poleward = min(max(abs(lat0), abs(lat0 + 1)), 89)
            posting = min(
                posting,
                step * _M_PER_DEG_LAT,
                step * _M_PER_DEG_LON * math.cos(math.radians(poleward)),
            )
        if not self._files:
            raise GeolocationError(f"no SRTM .hgt tiles in {self._dir}")
        self._posting = posting
        self._cache: cachetools.LRUCache[tuple[int, int], npt.NDArray[np.float32]] = (
            cachetools.LRUCache(maxsize=cache_tiles)
        )

    @property
    def posting_m(self) -> float:
        """Smallest distance between posts over the tiles present, in metres."""
        return self._posting

    def _tile(self, key: tuple[int, int]) -> npt.NDArray[np.float32] | None:
        path = self._files.get(key)
        if path is None:
            return None
        grid = self._cache.get(key)
        if grid is None:
            n = _tile_size(path)
            raw = np.fromfile(path, dtype=">i2").reshape(n, n)
            grid = raw.astype(np.float32)
            grid[raw == _SRTM_VOID] = np.nan
            self._cache[key] = grid
        return grid

    def height_msl(self, lat: npt.ArrayLike, lon: npt.ArrayLike) -> FloatArray:
        """Bilinear height (m MSL); NaN without a tile or next to a void."""
        lat_a = np.atleast_1d(np.asarray(lat, dtype=np.float64))
        lon_a = np.atleast_1d(np.asarray(lon, dtype=np.float64))
        lon_a = (lon_a + 180.0) % 360.0 - 180.0
        out = np.full(lat_a.shape, np.nan)
        lat0 = np.floor(lat_a)
        lon0 = np.floor(lon_a)
        keys = np.stack([lat0.ravel(), lon0.ravel()], axis=1)
        for key in np.unique(keys[np.all(np.isfinite(keys), axis=1)], axis=0):
            k = (int(key[0]), int(key[1]))
            grid = self._tile(k)
            if grid is None:
                continue
            sel = (lat0 == key[0]) & (lon0 == key[1])
            n = grid.shape[0] - 1
            row = (k[0] + 1.0 - lat_a[sel]) * n
            col = (lon_a[sel] - k[1]) * n
            out[sel] = _bilinear(grid, row, col)
        return out

    def covers(self, lat: npt.ArrayLike, lon: npt.ArrayLike) -> BoolArray:
        """True where a tile has a height."""
        return ~np.isnan(self.height_msl(lat, lon))


def _tile_size(path: Path) -> int:
    size = path.stat().st_size
    n = math.isqrt(size // 2)
    if n * n * 2 != size:
        raise GeolocationError(f"{path.name} is not a square int16 SRTM tile ({size} bytes)")
    return n


def intersect_terrain(
    s: tuple[float, float, float],
    d: tuple[float, float, float],
    terrain: Terrain,
    geoid: Geoid,
    *,
    max_range_m: float = DEFAULT_MAX_RANGE_M,
) -> float | None:
    """Distance along the unit ray s + t d (ECEF) to its first crossing of the terrain.

    Marches in steps of the DEM posting (chunks of samples evaluated at once), takes the first
    sample below the terrain and bisects the bracket to 1 mm. None when the ray leaves the
    model's coverage, passes below any possible land, comes into the coverage already below
    the ground (it met the ground outside), or runs out of range without a crossing.
    Raises GeolocationError if the sensor itself is below the terrain.
    """
    step = float(terrain.posting_m)
    if not (math.isfinite(step) and step > 0.0):
        raise GeolocationError("terrain posting must be a positive length")
    sv = np.asarray(s, dtype=np.float64)
    dv = np.asarray(d, dtype=np.float64)
    dv = dv / np.linalg.norm(dv)

    def clearance(t: FloatArray) -> FloatArray:
        p = sv[:, None] + dv[:, None] * t[None, :]
        lat, lon, h = ecef_to_geodetic(p[0], p[1], p[2])
        ground = geoid.msl_to_hae(lat, lon, terrain.height_msl(lat, lon))
        out: FloatArray = h - ground
        # below any land: report as a crossing-free, terminal sample
        out[np.isnan(out) & (h < LOWEST_GROUND_HAE)] = -np.inf
        return out

    chunk = 2048
    t_prev = 0.0
    above_seen = False  # the ray has passed over covered ground: a crossing can be bracketed
    start = 0
    while start * step <= max_range_m:
        t = (start + np.arange(chunk, dtype=np.float64)) * step
        t = t[t <= max_range_m + step]
        c = clearance(t)
        # NaN (no data under it) is not caught here, nor -inf (no land can be that low).
        if start == 0 and np.isfinite(c[0]) and c[0] < MIN_CLEARANCE_M:
            where = f"only {c[0]:.2f} m above" if c[0] >= 0.0 else f"{-c[0]:.1f} m below"
            raise GeolocationError(
                f"the sensor is {where} the terrain model (at least {MIN_CLEARANCE_M:g} m above "
                "it is needed)",
                status=RayStatus.SENSOR_BELOW_SURFACE,
            )
        below = c <= 0.0  # NaN (no data) counts as not below
        if below.any():
            i = int(np.argmax(below))
            if np.isneginf(c[i]):
                return None
            if not (above_seen or bool((c[:i] > 0.0).any())):
                # The ray comes into the model's coverage already below its ground: it met the
                # ground outside, where the model knows nothing. Bisecting would put the point
                # on the coverage's edge (kilometres off, with a terrain-sized CE90).
                return None
            lo = float(t[i - 1]) if i > 0 else t_prev
            return _bisect(clearance, lo, float(t[i]))
        above_seen = above_seen or bool((c > 0.0).any())
        t_prev = float(t[-1])
        start += chunk
    return None


def slope_at(terrain: Terrain, geoid: Geoid, lat: float, lon: float) -> tuple[float, float] | None:
    """The terrain's rise to the north and to the east at a point (m/m of its height above the
    ellipsoid), by central differences one posting either side; None where the model lacks
    data around the point, or within a few metres of a pole (no east there)."""
    if abs(lat) > 89.999:
        return None
    step = float(terrain.posting_m)
    slat = math.sin(math.radians(lat))
    w = 1.0 - WGS84_E2 * slat * slat
    meridian = WGS84_A * (1.0 - WGS84_E2) / w**1.5
    parallel = WGS84_A / math.sqrt(w) * math.cos(math.radians(lat))
    dlat = math.degrees(step / meridian)
    dlon = math.degrees(step / parallel)
    lats = np.array([lat + dlat, lat - dlat, lat, lat])
    lons = np.array([lon, lon, lon + dlon, lon - dlon])
    h = geoid.msl_to_hae(lats, lons, terrain.height_msl(lats, lons))
    if not np.isfinite(h).all():
        return None
    return float(h[0] - h[1]) / (2.0 * step), float(h[2] - h[3]) / (2.0 * step)


def _bisect(clearance: Callable[[FloatArray], FloatArray], lo: float, hi: float) -> float:
    """Bisection on clearance(t) = 0 between lo (above or no data) and hi (below)."""
    while hi - lo > BISECTION_TOL_M:
        mid = 0.5 * (lo + hi)
        c = clearance(np.array([mid]))[0]
        if c <= 0.0:
            hi = mid
        else:
            lo = mid
    return 0.5 * (lo + hi)
