"""The EGM96 geoid shipped as package data: undulation N and MSL <-> HAE (h = H + N).

Read from the NGA 15' grid in PROJ's GTX layout with the standard library's lzma, so heights
convert offline from a plain install (pyproj without the grid silently applies a zero shift).
"""

from __future__ import annotations

import functools
import lzma
import struct
from dataclasses import dataclass
from importlib import resources

import numpy as np
import numpy.typing as npt

from copbridge.geo.ellipsoid import FloatArray

_GTX_HEADER = struct.Struct(">ddddii")


@dataclass(frozen=True, slots=True, eq=False)
class Geoid:
    """A global geoid grid (rows south to north, columns east from lon0), bilinear lookup."""

    lat0: float
    lon0: float
    dlat: float
    dlon: float
    grid: npt.NDArray[np.float32]  # (rows, cols) metres
    name: str = "EGM96"

    @classmethod
    def from_gtx(cls, data: bytes, name: str = "EGM96") -> Geoid:
        """Parse a GTX file: 40-byte big-endian header, then big-endian float32 rows."""
        lat0, lon0, dlat, dlon, rows, cols = _GTX_HEADER.unpack_from(data, 0)
        values = np.frombuffer(data, dtype=">f4", count=rows * cols, offset=_GTX_HEADER.size)
        grid = values.reshape(rows, cols).astype(np.float32)
        return cls(lat0=lat0, lon0=lon0, dlat=dlat, dlon=dlon, grid=grid, name=name)

    @property
    def wraps(self) -> bool:
        """True when the columns cover the full circle (the last column is next to the first)."""
        return bool(abs(self.grid.shape[1] * self.dlon - 360.0) < 1e-9)

    def undulation(self, lat: npt.ArrayLike, lon: npt.ArrayLike) -> FloatArray:
        """Geoid height N (m above the WGS84 ellipsoid), bilinear, vectorised; lon any range."""
        lat_a = np.asarray(lat, dtype=np.float64)
        lon_a = np.asarray(lon, dtype=np.float64)
        rows, cols = self.grid.shape
        fr = np.clip((lat_a - self.lat0) / self.dlat, 0.0, rows - 1.0)
        fc = np.mod(lon_a - self.lon0, 360.0) / self.dlon
        r0 = np.minimum(fr.astype(np.intp), rows - 2)
        c0 = np.minimum(fc.astype(np.intp), cols - 1)
        wr = fr - r0
        wc = fc - c0
        # wrap-around: the column after the last is the first (lon0 + 360)
        c1 = np.where(c0 + 1 >= cols, 0, c0 + 1) if self.wraps else np.minimum(c0 + 1, cols - 1)
        g = self.grid
        top = g[r0 + 1, c0] * (1.0 - wc) + g[r0 + 1, c1] * wc
        bottom = g[r0, c0] * (1.0 - wc) + g[r0, c1] * wc
        return np.asarray(bottom * (1.0 - wr) + top * wr, dtype=np.float64)

    def undulation_at(self, lat: float, lon: float) -> float:
        """The same bilinear N for one point in plain floats: the API's scalar path calls this
        several times per detection, where numpy's per-call overhead would dominate."""
        rows, cols = self.grid.shape
        fr = min(max((lat - self.lat0) / self.dlat, 0.0), rows - 1.0)
        fc = ((lon - self.lon0) % 360.0) / self.dlon
        r0 = min(int(fr), rows - 2)
        c0 = min(int(fc), cols - 1)
        wr = fr - r0
        wc = fc - c0
        c1 = (0 if c0 + 1 >= cols else c0 + 1) if self.wraps else min(c0 + 1, cols - 1)
        item = self.grid.item
        top = item(r0 + 1, c0) * (1.0 - wc) + item(r0 + 1, c1) * wc
        bottom = item(r0, c0) * (1.0 - wc) + item(r0, c1) * wc
        return float(bottom * (1.0 - wr) + top * wr)

    def msl_to_hae(
        self, lat: npt.ArrayLike, lon: npt.ArrayLike, height_msl: npt.ArrayLike
    ) -> FloatArray:
        """Height above the ellipsoid from height above mean sea level: h = H + N."""
        return np.asarray(height_msl, dtype=np.float64) + self.undulation(lat, lon)

    def hae_to_msl(
        self, lat: npt.ArrayLike, lon: npt.ArrayLike, height_hae: npt.ArrayLike
    ) -> FloatArray:
        """Height above mean sea level from height above the ellipsoid: H = h - N."""
        return np.asarray(height_hae, dtype=np.float64) - self.undulation(lat, lon)


@functools.cache
def load_egm96() -> Geoid:
    """The EGM96 15' grid from the package data (decompressed once, then cached)."""
    blob = resources.files("copbridge.geo").joinpath("data/egm96_15.gtx.xz").read_bytes()
    return Geoid.from_gtx(lzma.decompress(blob), name="EGM96")
