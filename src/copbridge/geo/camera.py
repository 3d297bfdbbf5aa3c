"""The camera model: intrinsics from the request, pixel <-> normalised ray, Brown-Conrady.

OpenCV's Brown-Conrady distortion (k1, k2, p1, p2, k3) acts on normalised image coordinates;
the inverse is solved by Newton's method (vectorised, and a scalar twin for single detections).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from copbridge.geo.ellipsoid import FloatArray
from copbridge.geo.errors import GeolocationError, RayStatus

UNDISTORT_MAX_ITER = 30
"""Newton iterations allowed before undistortion is declared not to converge."""
UNDISTORT_TOL = 1e-12
"""Convergence threshold on the normalised-coordinate residual (~1e-9 px)."""
FOV_FOCAL_TOLERANCE = 0.01
"""fx (fy) and hfov (vfov) given together must agree to 1 %."""


@dataclass(frozen=True, slots=True)
class Intrinsics:
    """Pinhole intrinsics (pixels) and OpenCV Brown-Conrady distortion coefficients.

    Pixel (u, v): origin top-left, u right, v down, taken as given (no half-pixel shift).
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    k1: float = 0.0
    k2: float = 0.0
    p1: float = 0.0
    p2: float = 0.0
    k3: float = 0.0

    @property
    def has_distortion(self) -> bool:
        """True when any distortion coefficient is non-zero."""
        return any((self.k1, self.k2, self.p1, self.p2, self.k3))

    @property
    def distortion(self) -> tuple[float, float, float, float, float]:
        """(k1, k2, p1, p2, k3)."""
        return (self.k1, self.k2, self.p1, self.p2, self.k3)

    @classmethod
    def from_request(
        cls,
        width: int,
        height: int,
        hfov: float | None = None,
        vfov: float | None = None,
        fx: float | None = None,
        fy: float | None = None,
        cx: float | None = None,
        cy: float | None = None,
        k1: float = 0.0,
        k2: float = 0.0,
        p1: float = 0.0,
        p2: float = 0.0,
        k3: float = 0.0,
    ) -> Intrinsics:
        """Intrinsics from the request's ``camera`` object, by the spec's rules.

        fx = (width/2)/tan(hfov/2) when only hfov is given; fy = fx unless vfov (or fy) is
        given; cx, cy default to the image centre. Raises GeolocationError naming the field when
        a value is missing, out of range or inconsistent (fx and hfov disagreeing by > 1 %).
        """
        for name, val in (("camera.width", width), ("camera.height", height)):
            if not (isinstance(val, int | float) and math.isfinite(val) and val > 0):
                raise GeolocationError(f"{name} must be a positive number, got {val}", field=name)
        optional = {
            "camera.hfov": hfov,
            "camera.vfov": vfov,
            "camera.fx": fx,
            "camera.fy": fy,
            "camera.cx": cx,
            "camera.cy": cy,
            "camera.distortion.k1": k1,
            "camera.distortion.k2": k2,
            "camera.distortion.p1": p1,
            "camera.distortion.p2": p2,
            "camera.distortion.k3": k3,
        }
        for name, value in optional.items():
            if value is not None and not math.isfinite(value):
                raise GeolocationError(f"{name} must be finite, got {value}", field=name)
        for name, fov in (("camera.hfov", hfov), ("camera.vfov", vfov)):
            if fov is not None and not 0.0 < fov < 180.0:
                raise GeolocationError(
                    f"{name} must be between 0 and 180 degrees (exclusive), got {fov}", field=name
                )
        for name, f in (("camera.fx", fx), ("camera.fy", fy)):
            if f is not None and f <= 0.0:
                raise GeolocationError(f"{name} must be positive, got {f}", field=name)
        if hfov is None and fx is None:
            raise GeolocationError(
                "camera.hfov (degrees) or camera.fx (pixels) is required", field="camera.hfov"
            )
        fx_fov = None if hfov is None else (width / 2.0) / math.tan(math.radians(hfov) / 2.0)
        fy_fov = None if vfov is None else (height / 2.0) / math.tan(math.radians(vfov) / 2.0)
        fx_val = _consistent("camera.hfov", fx, fx_fov)
        assert fx_val is not None  # hfov or fx was given
        fy_val = _consistent("camera.vfov", fy, fy_fov)
        if fy_val is None:
            fy_val = fx_val
        return cls(
            width=int(width),
            height=int(height),
            fx=fx_val,
            fy=fy_val,
            cx=width / 2.0 if cx is None else float(cx),
            cy=height / 2.0 if cy is None else float(cy),
            k1=float(k1),
            k2=float(k2),
            p1=float(p1),
            p2=float(p2),
            k3=float(k3),
        )


def _consistent(field: str, focal: float | None, from_fov: float | None) -> float | None:
    """The focal length from pixels or from the FOV (None if neither); both given must agree."""
    if focal is None:
        return from_fov
    if from_fov is not None and abs(focal - from_fov) > FOV_FOCAL_TOLERANCE * focal:
        axis = "fx" if field.endswith("hfov") else "fy"
        raise GeolocationError(
            f"{field} implies {axis} = {from_fov:.1f} px but camera.{axis} = {focal:.1f} px",
            field=field,
        )
    return float(focal)


def distort(
    x: FloatArray, y: FloatArray, k: tuple[float, float, float, float, float]
) -> tuple[FloatArray, FloatArray]:
    """Apply Brown-Conrady distortion to normalised coordinates (forward model, OpenCV)."""
    k1, k2, p1, p2, k3 = k
    r2 = x * x + y * y
    rad = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
    xy = x * y
    return (
        x * rad + 2.0 * p1 * xy + p2 * (r2 + 2.0 * x * x),
        y * rad + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * xy,
    )


def undistort(
    xd: FloatArray, yd: FloatArray, k: tuple[float, float, float, float, float]
) -> tuple[FloatArray, FloatArray, npt.NDArray[np.bool_]]:
    """Invert Brown-Conrady by Newton's method.

    Returns (x, y, ok): ok is False where Newton did not converge within UNDISTORT_MAX_ITER or
    the solution lies beyond the fold of the distortion (non-positive Jacobian determinant or
    radial factor),
    i.e. where the pixel has no unique undistorted position.
    """
    k1, k2, p1, p2, k3 = k
    x = xd.copy()
    y = yd.copy()
    done = np.zeros(x.shape, dtype=np.bool_)
    det = np.ones_like(x)
    rad = np.ones_like(x)
    with np.errstate(all="ignore"):
        for _ in range(UNDISTORT_MAX_ITER):
            r2 = x * x + y * y
            rad = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
            drad = k1 + r2 * (2.0 * k2 + 3.0 * k3 * r2)  # d(rad)/d(r2)
            xy = x * y
            fx = x * rad + 2.0 * p1 * xy + p2 * (r2 + 2.0 * x * x) - xd
            fy = y * rad + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * xy - yd
            j11 = rad + 2.0 * x * x * drad + 2.0 * p1 * y + 6.0 * p2 * x
            j12 = 2.0 * xy * drad + 2.0 * p1 * x + 2.0 * p2 * y
            j22 = rad + 2.0 * y * y * drad + 6.0 * p1 * y + 2.0 * p2 * x
            det = j11 * j22 - j12 * j12
            done = np.abs(fx) + np.abs(fy) <= UNDISTORT_TOL * (1.0 + np.abs(x) + np.abs(y))
            if done.all():
                break
            x = x - (j22 * fx - j12 * fy) / det
            y = y - (j11 * fy - j12 * fx) / det
    # a root with rad <= 0 or det <= 0 lies beyond the fold (mirrored through the centre)
    ok = done & (det > 0.0) & (rad > 0.0) & np.isfinite(x) & np.isfinite(y)
    return x, y, ok


def undistort_scalar(
    xd: float, yd: float, k: tuple[float, float, float, float, float]
) -> tuple[float, float]:
    """Scalar twin of :func:`undistort`; raises GeolocationError when it cannot invert."""
    k1, k2, p1, p2, k3 = k
    x, y = xd, yd
    for _ in range(UNDISTORT_MAX_ITER):
        r2 = x * x + y * y
        rad = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
        drad = k1 + r2 * (2.0 * k2 + 3.0 * k3 * r2)
        xy = x * y
        fx = x * rad + 2.0 * p1 * xy + p2 * (r2 + 2.0 * x * x) - xd
        fy = y * rad + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * xy - yd
        j11 = rad + 2.0 * x * x * drad + 2.0 * p1 * y + 6.0 * p2 * x
        j12 = 2.0 * xy * drad + 2.0 * p1 * x + 2.0 * p2 * y
        j22 = rad + 2.0 * y * y * drad + 6.0 * p1 * y + 2.0 * p2 * x
        det = j11 * j22 - j12 * j12
        if abs(fx) + abs(fy) <= UNDISTORT_TOL * (1.0 + abs(x) + abs(y)):
            if det > 0.0 and rad > 0.0:
                return x, y
            break
        if det == 0.0 or not math.isfinite(det):
            break
        x -= (j22 * fx - j12 * fy) / det
        y -= (j11 * fy - j12 * fx) / det
    raise GeolocationError(
        "lens undistortion did not converge for this pixel: the distortion coefficients fold "
        "the image there (check camera.distortion)",
        field="camera.distortion",
        status=RayStatus.UNDISTORTION_FAILED,
    )
