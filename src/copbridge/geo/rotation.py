"""The MISB ST 0601 rotation chain from the camera frame to local North-East-Down.

R = Rz(heading) Ry(pitch) Rx(roll) Rz(gimbal az) Ry(gimbal el) Rx(gimbal roll); applied to
vectors one elementary rotation at a time, so a batch costs a few flat array operations.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from copbridge.geo.ellipsoid import FloatArray


def rx(angle_deg: float) -> FloatArray:
    """Rotation about x (roll), spec convention."""
    a = np.radians(angle_deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def ry(angle_deg: float) -> FloatArray:
    """Rotation about y (pitch / elevation), spec convention."""
    a = np.radians(angle_deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rz(angle_deg: float) -> FloatArray:
    """Rotation about z (heading / azimuth), spec convention."""
    a = np.radians(angle_deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def camera_to_ned(
    heading: float,
    pitch: float,
    roll: float,
    gimbal_azimuth: float,
    gimbal_elevation: float,
    gimbal_roll: float,
) -> FloatArray:
    """The 3x3 matrix R taking camera-frame vectors (x boresight, y right, z down) to NED."""
    return (
        rz(heading)
        @ ry(pitch)
        @ rx(roll)
        @ rz(gimbal_azimuth)
        @ ry(gimbal_elevation)
        @ rx(gimbal_roll)
    )


Vec3 = tuple[FloatArray, FloatArray, FloatArray]


def _apply_zyx(
    cos: FloatArray,
    sin: FloatArray,
    first: int,
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    z: npt.ArrayLike,
) -> Vec3:
    """Rz(a) Ry(b) Rx(c) applied to (x, y, z), with a, b, c the chain angles first..first+2."""
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    za = np.asarray(z, dtype=np.float64)
    c, s = cos[first + 2], sin[first + 2]
    ya, za = c * ya - s * za, s * ya + c * za
    c, s = cos[first + 1], sin[first + 1]
    xa, za = c * xa + s * za, c * za - s * xa
    c, s = cos[first], sin[first]
    return c * xa - s * ya, s * xa + c * ya, za


def apply_gimbal(
    cos: FloatArray, sin: FloatArray, x: npt.ArrayLike, y: npt.ArrayLike, z: npt.ArrayLike
) -> Vec3:
    """Rz(gimbal az) Ry(gimbal el) Rx(gimbal roll) applied to (x, y, z) (cos/sin: apply_chain)."""
    return _apply_zyx(cos, sin, 3, x, y, z)


def apply_platform(
    cos: FloatArray, sin: FloatArray, x: npt.ArrayLike, y: npt.ArrayLike, z: npt.ArrayLike
) -> Vec3:
    """Rz(heading) Ry(pitch) Rx(roll) applied to (x, y, z); cos/sin as in apply_chain."""
    return _apply_zyx(cos, sin, 0, x, y, z)


def apply_chain(
    cos: FloatArray, sin: FloatArray, x: npt.ArrayLike, y: npt.ArrayLike, z: npt.ArrayLike
) -> Vec3:
    """Rotate camera vectors (x, y, z) to NED.

    ``cos``/``sin`` have shape (6, n) in chain order: heading, pitch, roll, gimbal azimuth,
    gimbal elevation, gimbal roll. The innermost rotation (gimbal roll) is applied first.
    """
    return apply_platform(cos, sin, *apply_gimbal(cos, sin, x, y, z))


def chain_axes(cos: FloatArray, sin: FloatArray) -> tuple[Vec3, ...]:
    """The six rotation axes of the chain expressed in NED (for the Jacobian).

    d(R v)/d(angle_k) = axis_k x (R v): axis_k is the k-th elementary axis rotated by all the
    rotations to its left in the chain. The last axis (gimbal roll) is the boresight R e1.
    """
    zero = np.zeros_like(cos[0])
    ch, sh, cp, sp = cos[0], sin[0], cos[1], sin[1]
    cga, sga, cge, sge = cos[3], sin[3], cos[4], sin[4]
    return (
        (zero, zero, np.ones_like(zero)),  # heading turns about down
        (-sh, ch, zero),  # pitch about Rz(h) e_y
        (ch * cp, sh * cp, -sp),  # roll about Rz(h) Ry(p) e_x
        apply_platform(cos, sin, zero, zero, 1.0),  # gimbal azimuth about M e_z
        apply_platform(cos, sin, -sga, cga, zero),  # gimbal elevation about M Rz(gaz) e_y
        apply_platform(cos, sin, cga * cge, sga * cge, -sge),  # gimbal roll: the boresight
    )
