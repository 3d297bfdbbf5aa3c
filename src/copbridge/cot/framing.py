"""TAK Protocol version 1 framing: the mesh (UDP) header and the stream (TCP) varint length prefix.

Mesh: `0xbf 0x01 0xbf` + TakMessage. Stream: `0xbf` + varint(len) + TakMessage, one after another.
"""

from __future__ import annotations

MAGIC = 0xBF
MESH_HEADER = bytes((MAGIC, 0x01, MAGIC))
DEFAULT_MAX_MESSAGE = 1 << 20


class FramingError(ValueError):
    """Bytes that are not a TAK Protocol v1 frame (or a frame larger than allowed)."""


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def mesh_frame(payload: bytes) -> bytes:
    """A mesh (UDP datagram) TAK message: header + serialised TakMessage."""
    return MESH_HEADER + payload


def stream_frame(payload: bytes) -> bytes:
    """A stream (TCP) TAK message: 0xbf, varint length, serialised TakMessage."""
    return bytes((MAGIC,)) + _varint(len(payload)) + payload


def mesh_payload(datagram: bytes) -> bytes:
    """The TakMessage bytes of one mesh datagram."""
    if datagram[:3] != MESH_HEADER:
        raise FramingError("not a TAK Protocol v1 mesh datagram (header 0xbf 0x01 0xbf)")
    return bytes(datagram[3:])


class StreamDeframer:
    """Splits a TCP byte stream into TakMessage payloads; feed any chunking, get whole messages."""

    __slots__ = ("_buffer", "max_message")

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self._buffer = bytearray()
        self.max_message = max_message

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        messages: list[bytes] = []
        while self._buffer:
            if self._buffer[0] != MAGIC:
                raise FramingError(f"expected 0xbf, got {self._buffer[0]:#04x}")
            length = 0
            shift = 0
            pos = 1
            while True:
                if pos >= len(self._buffer):
                    return messages  # length not complete yet
                byte = self._buffer[pos]
                length |= (byte & 0x7F) << shift
                pos += 1
                if not byte & 0x80:
                    break
                shift += 7
                if shift > 35:
                    raise FramingError("varint length too long")
            if length > self.max_message:
                raise FramingError(f"message of {length} bytes exceeds {self.max_message}")
            if len(self._buffer) < pos + length:
                return messages
            messages.append(bytes(self._buffer[pos : pos + length]))
            del self._buffer[: pos + length]
        return messages

    @property
    def pending(self) -> int:
        """Bytes held that do not yet make a whole message."""
        return len(self._buffer)
