"""Input error model and its propagation to CE90/LE90: analytic Jacobian, sampling near grazing.

The Jacobian of the ground point with respect to sensor position (3), the six chain angles,
relative focal length and ground height is written out by hand so a whole batch costs a few
dozen array operations; near grazing incidence, where linearisation under-estimates and some
perturbed rays miss the Earth, CE90 comes from a seeded Monte Carlo instead.
"""

from __future__ import annotations

import functools
import math
import statistics
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from copbridge.geo.core import RayGeometry, ecef_to_ned, solve_rays, surface_normal
from copbridge.geo.ellipsoid import FloatArray
from copbridge.geo.rotation import chain_axes

GroundSource = Literal["request", "terrain", "agl", "ellipsoid"]

CE90_PER_SIGMA: Final = 2.1460
"""CE90 of a circular normal error in units of the per-axis sigma: sqrt(2 ln 10)."""
LE90_PER_SIGMA: Final = 1.6449
"""LE90 of a normal error in units of sigma (two-sided 90 %)."""
UNKNOWN_CE: Final = 9_999_999.0
"""CoT's 'unknown' value; used for ce90/le90 (and ce/le) when no bound can be given."""

DEFAULT_HORIZONTAL_M: Final = 5.0
"""Sensor horizontal position, 1-sigma per axis (north and east): a GNSS/INS fix (API example)."""
DEFAULT_VERTICAL_M: Final = 10.0
"""Sensor height, 1-sigma: GNSS height and baro/MSL-model errors (API example)."""
DEFAULT_ATTITUDE_DEG: Final = 0.5
"""Each of the six angles (platform heading/pitch/roll, gimbal az/el/roll), 1-sigma (API example):
a tactical-grade INS plus gimbal encoders and the boresight alignment between them."""
DEFAULT_FOCAL_REL: Final = 0.01
"""Relative focal-length (FOV) error, 1-sigma: 1 % for a nominal, not calibrated, HFOV/zoom."""
DEFAULT_GROUND_SIGMA_M: Final[dict[GroundSource, float]] = {
    # the client states the height, typically from a survey or its own fine DEM
    "request": 1.0,
    # SRTM-class DEM: absolute vertical error LE90 16 m (SRTM spec) -> 16 / 1.6449 = 9.7 m
    "terrain": 16.0 / LE90_PER_SIGMA,
    # ground = platform HAE - AGL: altimeter error plus the ground under the target not being at
    # the height of the ground under the platform (flat-terrain assumption)
    "agl": 5.0,
    # nothing is known: 0 HAE stands for ground anywhere from the geoid low (-107 m) to high
    # plateaus; land elevations scatter by several hundred metres, so 500 m keeps CE90 honest
    # (very large at oblique views) instead of falsely tight
    "ellipsoid": 500.0,
}
"""Ground-height 1-sigma by where the ground height came from (``Fix.ground``)."""

GRAZING_RATIO: Final = 0.05
"""Sample instead of linearising when the line-of-sight angular sigma exceeds this fraction of
tan(incidence angle): the second-order term of the range error is sigma/tan(incidence) of the
first-order one, so beyond ~5 % (about 10-17 deg incidence at default sigmas) linear CE90
starts to under-estimate."""
MC_SAMPLES: Final = 2000
"""Monte Carlo samples per ray when sampling (Latin hypercube: CE90 within ~2 % (1 sd) of a
200,000-draw estimate at grazing views; 500 plain draws scattered by 5-10 %, and the set this
used before read 5-21 % low)."""
MC_SEED: Final = 20260601
"""Seed of the Monte Carlo draws: common to every ray, so results are deterministic and the
scalar and vectorised paths agree."""
_MC_CHUNK_RAYS: Final = 32_768  # rays x samples per chunk: small enough to stay in cache

N_PARAMS: Final = 11
"""Jacobian columns: sensor north, east, down; heading, pitch, roll, gimbal azimuth, elevation,
roll; relative focal length; ground height."""


@dataclass(frozen=True, slots=True)
class InputSigmas:
    """1-sigma input errors for CE90/LE90 (metres, degrees, relative focal length).

    ``horizontal_m`` applies to north and east each; ``attitude_deg`` to each of the six angles
    unless ``angles_deg`` gives them one by one (heading, pitch, roll, gimbal azimuth,
    elevation, roll); ``ground_m`` None means the default for the ground source
    (``DEFAULT_GROUND_SIGMA_M``).
    """

    horizontal_m: float = DEFAULT_HORIZONTAL_M
    vertical_m: float = DEFAULT_VERTICAL_M
    attitude_deg: float = DEFAULT_ATTITUDE_DEG
    angles_deg: tuple[float, float, float, float, float, float] | None = None
    focal_rel: float = DEFAULT_FOCAL_REL
    ground_m: float | None = None
    agl_m: float | None = None
    """The stated 1-sigma of an AGL altitude. The ground of an AGL platform is its HAE minus the
    AGL, so the sensor's own height error cancels and this is what remains, with the
    flat-terrain term of ``DEFAULT_GROUND_SIGMA_M["agl"]`` beside it."""

    def __post_init__(self) -> None:
        values = [self.horizontal_m, self.vertical_m, self.attitude_deg, self.focal_rel]
        values += list(self.angles_deg or ()) + [
            x for x in (self.ground_m, self.agl_m) if x is not None
        ]
        if any(not (math.isfinite(x) and x >= 0.0) for x in values):
            raise ValueError("uncertainty sigmas must be finite and non-negative")

    def angle_sigmas_deg(self) -> tuple[float, float, float, float, float, float]:
        """The six angle sigmas in chain order."""
        if self.angles_deg is not None:
            return self.angles_deg
        a = self.attitude_deg
        return (a, a, a, a, a, a)

    def ground_sigma_m(self, ground: GroundSource) -> float:
        """Ground-height sigma: the override, else the default for the source (for an AGL
        ground with a stated AGL error: that error and the flat-terrain term together)."""
        if self.ground_m is not None:
            return self.ground_m
        if ground == "agl" and self.agl_m is not None:
            return math.hypot(self.agl_m, DEFAULT_GROUND_SIGMA_M["agl"])
        return DEFAULT_GROUND_SIGMA_M[ground]


DEFAULT_SIGMAS: Final = InputSigmas()
"""The server defaults (see the DEFAULT_* constants)."""


# --- CE90 of an elliptical normal error ------------------------------------------------------


@functools.cache
def ce90_table() -> tuple[FloatArray, FloatArray]:
    """CE90 / sigma_major as a function of rho = sigma_minor / sigma_major, on rho in [0, 1].

    Solved numerically from P(r) = 1 - 1/(2 pi) * integral exp(-r^2 / (2 q(phi))) dphi with
    q = cos^2 phi + rho^2 sin^2 phi (the substitution tan(theta) = rho tan(phi) of the polar
    integral), by trapezoid rule (spectrally exact for this periodic integrand) and Newton.
    Ends: 1.6449 (rho = 0, a line) and 2.1460 (rho = 1, a circle).
    """
    rho = np.linspace(0.0, 1.0, 201)[:, None]
    phi = (np.arange(512) + 0.5) * (2.0 * np.pi / 512)
    q = np.cos(phi) ** 2 + rho**2 * np.sin(phi) ** 2
    r = np.full((rho.shape[0], 1), 2.0)
    for _ in range(30):
        e = np.exp(-(r**2) / (2.0 * q))
        p = 1.0 - e.mean(axis=1, keepdims=True)
        dp = (r / q * e).mean(axis=1, keepdims=True)
        r = r - (p - 0.9) / dp
    return rho[:, 0].copy(), r[:, 0].copy()


def ce90_from_covariance(cee: npt.ArrayLike, cen: npt.ArrayLike, cnn: npt.ArrayLike) -> FloatArray:
    """CE90 (m) of a zero-mean normal horizontal error with the 2x2 east/north covariance."""
    a = np.asarray(cee, dtype=np.float64)
    b = np.asarray(cen, dtype=np.float64)
    c = np.asarray(cnn, dtype=np.float64)
    mean = 0.5 * (a + c)
    rad = np.hypot(0.5 * (a - c), b)
    lmax = mean + rad
    lmin = np.maximum(mean - rad, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(lmax > 0.0, np.sqrt(lmin / lmax), 1.0)
    grid, factor = ce90_table()
    return np.sqrt(lmax) * np.interp(rho, grid, factor)


def ce90_from_covariance_scalar(cee: float, cen: float, cnn: float) -> float:
    """Scalar twin of :func:`ce90_from_covariance` (no numpy per call beyond the table)."""
    mean = 0.5 * (cee + cnn)
    rad = math.hypot(0.5 * (cee - cnn), cen)
    lmax = mean + rad
    lmin = max(mean - rad, 0.0)
    if lmax <= 0.0:
        return 0.0
    rho = math.sqrt(lmin / lmax)
    return math.sqrt(lmax) * _interp_table(rho)


@functools.cache
def _table_lists() -> tuple[list[float], list[float]]:
    grid, factor = ce90_table()
    return grid.tolist(), factor.tolist()


def _interp_table(rho: float) -> float:
    grid, factor = _table_lists()
    step = grid[1] - grid[0]
    i = min(int(rho / step), len(grid) - 2)
    w = (rho - grid[i]) / step
    return factor[i] * (1.0 - w) + factor[i + 1] * w


# --- linear propagation ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SigmaArrays:
    """Per-ray sigmas in SI units (radians for angles), broadcastable to the batch."""

    horizontal_m: FloatArray | float
    vertical_m: FloatArray | float
    angles_rad: tuple[float, float, float, float, float, float]
    focal_rel: float
    ground_m: FloatArray | float

    @classmethod
    def from_input(cls, sigmas: InputSigmas, ground_m: npt.ArrayLike) -> SigmaArrays:
        """SI sigmas from an InputSigmas and the per-ray ground-height sigma."""
        ang = sigmas.angle_sigmas_deg()
        return cls(
            horizontal_m=sigmas.horizontal_m,
            vertical_m=sigmas.vertical_m,
            angles_rad=(
                math.radians(ang[0]),
                math.radians(ang[1]),
                math.radians(ang[2]),
                math.radians(ang[3]),
                math.radians(ang[4]),
                math.radians(ang[5]),
            ),
            focal_rel=sigmas.focal_rel,
            ground_m=np.asarray(ground_m, dtype=np.float64),
        )


def _cross(a: tuple[FloatArray, ...], b: tuple[FloatArray, ...]) -> tuple[FloatArray, ...]:
    return (
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    )


def _dot(a: tuple[FloatArray, ...], b: tuple[FloatArray, ...]) -> FloatArray:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def propagate(
    geo: RayGeometry,
    sig: SigmaArrays,
    follow: npt.ArrayLike = 0.0,
) -> tuple[FloatArray, FloatArray, npt.NDArray[np.bool_]]:
    """Linearised CE90 and LE90 of the ground points in ``geo``, and which rays are grazing.

    ``follow`` = 1 where the ground height is platform HAE - AGL, so moving the sensor down
    moves the ground with it (the sensor-height error then only shifts the point vertically).
    Works in the NED axes at the sensor, where position perturbations are unit vectors.
    """
    s = (geo.slat, geo.clat, geo.slon, geo.clon)
    d = geo.d_ned
    n_ecef, g = surface_normal(geo.p_ecef, geo.ground_hae)
    n = ecef_to_ned(*s, n_ecef)
    ge, gn, gu = _ground_enu_in_ned(geo)
    t = geo.t
    nd = _dot(n, d)
    inv_nd = 1.0 / nd
    ed = _dot(ge, d) * inv_nd
    ndn = _dot(gn, d) * inv_nd
    ud = _dot(gu, d) * inv_nd

    cee = np.zeros_like(t)
    cen = np.zeros_like(t)
    cnn = np.zeros_like(t)
    vuu = np.zeros_like(t)

    def add(sigma: FloatArray | float, de: FloatArray, dn: FloatArray, du: FloatArray) -> None:
        s2 = np.square(sigma)
        cee.__iadd__(s2 * de * de)
        cen.__iadd__(s2 * de * dn)
        cnn.__iadd__(s2 * dn * dn)
        vuu.__iadd__(s2 * du * du)

    # sensor position: unit NED perturbations w = e_k, so a.w is the k-th component of a
    fol = np.asarray(follow, dtype=np.float64)
    for k, sigma in ((0, sig.horizontal_m), (1, sig.horizontal_m), (2, sig.vertical_m)):
        nw = n[k] + (fol * g if k == 2 else 0.0)
        add(sigma, ge[k] - ed * nw, gn[k] - ndn * nw, gu[k] - ud * nw)

    # angles: w = t (axis x d); a.w = axis . (t d x a)
    axes = chain_axes(geo.cos, geo.sin)
    cn = _cross(d, n)
    ce_ = _cross(d, ge)
    cn_ = _cross(d, gn)
    cu = _cross(d, gu)
    dd = _dot(d, d)
    los2 = np.zeros_like(t)
    for axis, sigma in zip(axes, sig.angles_rad, strict=True):
        nw = _dot(axis, cn)
        add(
            sigma * t,
            _dot(axis, ce_) - ed * nw,
            _dot(axis, cn_) - ndn * nw,
            _dot(axis, cu) - ud * nw,
        )
        ad = _dot(axis, d)
        los2 += sigma * sigma * (1.0 - ad * ad / dd)

    # relative focal length: w = t (boresight - d)
    bore = axes[5]
    wf = (bore[0] - d[0], bore[1] - d[1], bore[2] - d[2])
    nw = _dot(n, wf)
    add(
        sig.focal_rel * t,
        _dot(ge, wf) - ed * nw,
        _dot(gn, wf) - ndn * nw,
        _dot(gu, wf) - ud * nw,
    )
    los2 += sig.focal_rel**2 * _dot(wf, wf) / dd

    # ground height: dP = d g / (n.d) per metre
    add(sig.ground_m, ed * g, ndn * g, ud * g)

    ce90 = ce90_from_covariance(cee, cen, cnn)
    le90 = LE90_PER_SIGMA * np.sqrt(vuu)
    # incidence: sin(eps) = -u.d/|d|; grazing when sigma_los > ratio * tan(eps)
    sin_inc = -_dot(gu, d) / np.sqrt(dd)
    with np.errstate(invalid="ignore", divide="ignore"):
        tan_inc = np.abs(sin_inc) / np.sqrt(np.maximum(1.0 - sin_inc * sin_inc, 0.0))
    grazing = np.sqrt(los2) > GRAZING_RATIO * tan_inc
    return ce90, le90, grazing


def _ground_enu_in_ned(geo: RayGeometry) -> tuple[tuple[FloatArray, ...], ...]:
    """East, north, up at the ground point, expressed in the NED axes at the sensor."""
    s = (geo.slat, geo.clat, geo.slon, geo.clon)
    sl, cl, so, co = geo.gslat, geo.gclat, geo.gslon, geo.gclon
    zero = np.zeros_like(sl)
    e = ecef_to_ned(*s, (-so, co, zero))
    n = ecef_to_ned(*s, (-sl * co, -sl * so, cl))
    u = ecef_to_ned(*s, (cl * co, cl * so, sl))
    return e, n, u


# --- sampling near grazing -------------------------------------------------------------------


@functools.cache
def _mc_normals() -> FloatArray:
    """(N_PARAMS, MC_SAMPLES) standard normal draws shared by every ray: a Latin hypercube, so
    each input's draws cover its distribution evenly (one in each of MC_SAMPLES equally
    likely slices, randomly paired across inputs) and a fixed set cannot be lopsided."""
    rng = np.random.default_rng(MC_SEED)
    slices = np.array([rng.permutation(MC_SAMPLES) for _ in range(N_PARAMS)])
    quantiles = (slices + rng.random((N_PARAMS, MC_SAMPLES))) / MC_SAMPLES
    normal = statistics.NormalDist()
    return np.array([[normal.inv_cdf(q) for q in row] for row in quantiles.tolist()])


def sample_ce90(
    xn: FloatArray,
    yn: FloatArray,
    lat: FloatArray,
    lon: FloatArray,
    hae: FloatArray,
    angles_deg: FloatArray,
    ground_hae: FloatArray,
    nominal: tuple[FloatArray, FloatArray, FloatArray],
    sig: SigmaArrays,
    follow: npt.ArrayLike = 0.0,
) -> FloatArray:
    """CE90 by Monte Carlo: the 90th percentile of the horizontal distance of perturbed fixes.

    Every input is perturbed by its sigma (MC_SAMPLES common, seeded draws); perturbed rays
    that miss the ground count as infinitely far, so CE90 is UNKNOWN_CE when more than 10 %
    miss. ``nominal`` is the ECEF ground point each ray's distances are measured from.
    """
    m = xn.shape[0]
    out = np.empty(m)
    if m == 0:
        return out
    z = _mc_normals()
    k = z.shape[1]
    k90 = math.ceil(0.9 * k) - 1
    per_chunk = max(1, _MC_CHUNK_RAYS // k)
    hor = np.broadcast_to(np.asarray(sig.horizontal_m, dtype=np.float64), (m,))
    ver = np.broadcast_to(np.asarray(sig.vertical_m, dtype=np.float64), (m,))
    gsig = np.broadcast_to(np.asarray(sig.ground_m, dtype=np.float64), (m,))
    fol = np.broadcast_to(np.asarray(follow, dtype=np.float64), (m,))
    ang_sig = np.degrees(np.asarray(sig.angles_rad))[:, None, None]
    for lo in range(0, m, per_chunk):
        sl = slice(lo, min(m, lo + per_chunk))
        c = sl.stop - sl.start

        def rep(a: FloatArray, sl: slice = sl) -> FloatArray:
            return a[sl, None]

        # The sensor moves in its own north-east-down frame, which its attitude keeps: moved in
        # latitude and longitude instead, within ~100 m of a pole the frame turned by tens of
        # degrees and CE90 came out 13 times too large.
        dn = rep(hor) * z[0]
        de = rep(hor) * z[1]
        dd = rep(ver) * z[2]
        ang_s = angles_deg[:, sl, None] + ang_sig * z[3:9][:, None, :]
        scale = 1.0 / (1.0 + sig.focal_rel * z[9])
        xn_s = rep(xn) * scale
        yn_s = rep(yn) * scale
        gh_s = rep(ground_hae) + rep(gsig) * z[10] - rep(fol) * dd
        shape = (c * k,)
        geo = solve_rays(
            xn_s.reshape(shape),
            yn_s.reshape(shape),
            np.broadcast_to(rep(lat), (c, k)).reshape(shape),
            np.broadcast_to(rep(lon), (c, k)).reshape(shape),
            np.broadcast_to(rep(hae), (c, k)).reshape(shape),
            ang_s.reshape(6, -1),
            np.broadcast_to(gh_s, (c, k)).reshape(shape),
            shift_ned=(dn.reshape(shape), de.reshape(shape), dd.reshape(shape)),
        )
        px, py, pz = (a.reshape(c, k) for a in geo.p_ecef)
        nx, ny, nz = (rep(a) for a in nominal)
        dx, dy, dz = px - nx, py - ny, pz - nz
        # horizontal distance in the tangent plane at the nominal point
        rr = np.sqrt(nx * nx + ny * ny + nz * nz)
        radial = (dx * nx + dy * ny + dz * nz) / rr
        dist = np.sqrt(np.maximum(dx * dx + dy * dy + dz * dz - radial * radial, 0.0))
        dist[np.isnan(dist)] = np.inf
        out[sl] = np.partition(dist, k90, axis=1)[:, k90]
    return np.where(np.isfinite(out), out, UNKNOWN_CE)
