"""Local destinations: append CoT lines to a file, or write them to the process's stdout/stderr.

Useful for archiving, debugging and piping into other tools; they never go half-open.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import sys
from collections.abc import Sequence
from typing import BinaryIO

from copbridge.delivery.destinations import Destination
from copbridge.delivery.transports import LinkError, Unacknowledged


class FileTransport(Unacknowledged):
    """Appends one event per line; each batch is on disk (fsync) before its rows are marked
    sent, and a batch that cannot be written whole (a full disk) is cut off the file again,
    so the retry never glues half an event to the next one."""

    def __init__(self, destination: Destination) -> None:
        self.destination = destination
        self._file: BinaryIO | None = None

    async def open(self) -> None:
        def _open() -> BinaryIO:
            from pathlib import Path

            path = Path(self.destination.path)
            path.parent.mkdir(parents=True, exist_ok=True)
            return path.open("ab", buffering=0)

        try:
            self._file = await asyncio.to_thread(_open)
        except OSError as exc:
            raise LinkError(f"cannot open {self.destination.path}: {exc}") from exc

    async def send(self, frames: Sequence[bytes]) -> None:
        file = self._file
        if file is None:
            raise LinkError("file is closed")

        def _write() -> None:
            fd = file.fileno()
            info = os.fstat(fd)
            # A FIFO, /dev/null or a terminal can be neither cut back nor fsynced (EINVAL).
            regular = stat.S_ISREG(info.st_mode)
            data = memoryview(b"".join(frames))
            try:
                while data:
                    data = data[file.write(data) or 0 :]
                if regular:
                    os.fsync(fd)
            except OSError:
                if regular:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, info.st_size)  # appends began there
                raise

        try:
            await asyncio.to_thread(_write)
        except OSError as exc:
            raise LinkError(f"cannot write {self.destination.path}: {exc}") from exc

    async def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class LogTransport(Unacknowledged):
    """Writes one event per line to stdout or stderr."""

    def __init__(self, destination: Destination) -> None:
        self.destination = destination

    def _stream(self) -> BinaryIO:
        return sys.stderr.buffer if self.destination.path == "stderr" else sys.stdout.buffer

    async def open(self) -> None:
        return None

    async def send(self, frames: Sequence[bytes]) -> None:
        stream = self._stream()
        try:
            stream.write(b"".join(frames))
            stream.flush()
        except OSError as exc:
            raise LinkError(f"cannot write {self.destination.path}: {exc}") from exc

    async def close(self) -> None:
        return None
