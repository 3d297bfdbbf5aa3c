"""Images whose header promises more pixels than we decode are refused 413 before decoding,
with our limit in the message whichever check caught them (ours, or Pillow's own at open)."""

from __future__ import annotations

import base64
import struct
import zlib

import pytest
from fastapi.testclient import TestClient

from copbridge.images import MAX_PIXELS, ImageRejected, verify_image
from tests.api.conftest import example


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` (1-bit grey) with one tiny, empty IDAT: the
    decompression-bomb shape, without the memory to make a real one."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("side", "pixels"),
    [
        (8_000, "8000x8000 pixels"),  # over our limit, under Pillow's own
        (10_000, "100000000 pixels"),  # past Pillow's warning (89 M pixels)
        (30_000, "900000000 pixels"),  # past Pillow's error (179 M pixels)
    ],
)
def test_a_bomb_is_refused_as_too_large_naming_our_limit(side: int, pixels: str) -> None:
    with pytest.raises(ImageRejected) as refused:
        verify_image(_png_header(side, side), "image/png", 10_000_000)
    assert refused.value.too_large
    assert str(refused.value) == (
        f"image refused as a decompression bomb: {pixels} is over the {MAX_PIXELS} pixel limit"
    )


def test_a_bomb_in_a_detection_is_413_and_nothing_is_stored(client: TestClient) -> None:
    data = base64.b64encode(_png_header(30_000, 30_000)).decode()
    answer = client.post(
        "/api/v1/detections", json=example(image={"media_type": "image/png", "data": data})
    )
    assert answer.status_code == 413
    assert f"over the {MAX_PIXELS} pixel limit" in answer.json()["detail"]
    assert "178956970" not in answer.text
    assert client.get(f"/api/v1/detections/{example()['id']}").status_code == 404
