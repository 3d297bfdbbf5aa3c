"""Detection images: JPEG or PNG only, size-limited, verified by decoding with a bomb limit.

An image is named by the SHA-256 of its bytes, so retries and repeats are stored once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from copbridge.store.records import ImageBlob

MAX_PIXELS = 50_000_000
"""About 8K x 6K: the largest frame we decode; larger is treated as a decompression bomb."""

_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png"}


class ImageRejected(ValueError):
    """The bytes are not an acceptable image; ``too_large`` maps to 413, anything else to 422."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


@dataclass(frozen=True, slots=True)
class VerifiedImage:
    sha256: str
    media_type: str
    data: bytes
    width: int
    height: int

    def blob(self) -> ImageBlob:
        """What the store keeps of it: named by its SHA-256, with its type and bytes."""
        return ImageBlob(self.sha256, self.media_type, self.data)


def decode_inline(data: str) -> bytes:
    """The bytes of an image sent inline (``image.data``, base64)."""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageRejected(f"image.data is not valid base64: {exc}") from None


def verify_image(data: bytes, declared: str | None, max_bytes: int) -> VerifiedImage:
    """Decode ``data`` fully; refuse non-images, other formats, bombs and a wrong declared type."""
    if len(data) > max_bytes:
        raise ImageRejected(
            f"image is {len(data)} bytes, over the {max_bytes} limit", too_large=True
        )
    if not data:
        raise ImageRejected("image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            fmt, width, height = _decode(data)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(
            f"image refused as a decompression bomb: {_bomb_reason(exc)}", too_large=True
        ) from None
    except UnidentifiedImageError:  # its message names a BytesIO object, not the problem
        raise ImageRejected("image cannot be decoded as JPEG or PNG") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(f"image cannot be decoded as JPEG or PNG: {exc}") from None
    media_type = _FORMATS.get(fmt)
    if media_type is None:
        raise ImageRejected(f"image format {fmt or 'unknown'} is not accepted (JPEG or PNG only)")
    if declared is not None and declared != media_type:
        raise ImageRejected(f"image is declared {declared} but its bytes are {media_type}")
    return VerifiedImage(hashlib.sha256(data).hexdigest(), media_type, data, width, height)


def _bomb_reason(exc: Exception) -> str:
    """Ours, or Pillow's refusal (raised by ``Image.open`` itself, beyond its own limit) told
    with our limit: Pillow's named its 89 or 179 million pixels, not the limit we apply."""
    found = re.search(r"Image size \((\d+) pixels\)", str(exc))
    if found is None:
        return str(exc)
    return f"{int(found.group(1))} pixels is over the {MAX_PIXELS} pixel limit"


def _decode(data: bytes) -> tuple[str, int, int]:
    with Image.open(io.BytesIO(data)) as probe:
        fmt = probe.format or ""
        width, height = probe.size
        if width * height > MAX_PIXELS:
            raise Image.DecompressionBombError(
                f"{width}x{height} pixels is over the {MAX_PIXELS} pixel limit"
            )
        probe.verify()
    with Image.open(io.BytesIO(data)) as full:
        full.load()  # verify() skips pixel data; load() catches truncated frames
    return fmt, width, height
