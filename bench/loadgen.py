"""A small keep-alive HTTP/1.1 load generator on raw asyncio streams.

Written by hand because the benchmark client must cost far less than the server it measures
(httpx spends more CPU per request than a FastAPI route does); both sides of every ratio use it.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Result:
    seconds: float
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def summary(self) -> str:
        ms = [x * 1000 for x in self.latencies] or [float("nan")]
        return (
            f"{self.count} requests in {self.seconds:.2f} s = {self.rate:,.0f}/s; "
            f"p50 {statistics.median(ms):.2f} ms, p99 {self.percentile(99) * 1000:.2f} ms; "
            f"statuses {dict(self.statuses)}"
        )


def request_bytes(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{k}: {v}" for k, v in headers.items()),
        "",
        "",
    ]
    return "\r\n".join(lines).encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def closed_loop(
    host: str, port: int, make: Callable[[int], bytes], connections: int, seconds: float
) -> Result:
    """As fast as the server answers: ``connections`` clients, each one request at a time."""
    result = Result(seconds)
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**9))

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline:
                payload = make(next(counter))
                started = time.perf_counter()
                writer.write(payload)
                status = await _read_response(reader)
                result.latencies.append(time.perf_counter() - started)
                result.statuses[status] += 1
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(connections)))
    return result


async def open_loop(
    host: str,
    port: int,
    make: Callable[[int], bytes],
    rate: float,
    seconds: float,
    connections: int = 64,
    on_done: Callable[[int, int, float], None] | None = None,
) -> Result:
    """A fixed arrival rate: requests start on schedule whatever the answers' latency."""
    result = Result(seconds)
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await asyncio.open_connection(host, port))
    total = int(rate * seconds)
    # Every request is built before the clock starts: encoding JSON on the client while the
    # clock runs counted the client's own work (and its stalls) as the server's latency.
    payloads = [make(index) for index in range(total)]
    start = time.perf_counter()

    async def one(index: int, due: float) -> None:
        reader, writer = await pool.get()
        try:
            writer.write(payloads[index])
            status = await _read_response(reader)
            done = time.perf_counter()
            result.latencies.append(done - due)
            result.statuses[status] += 1
            if on_done is not None:
                on_done(index, status, done)
        finally:
            pool.put_nowait((reader, writer))

    tasks = []
    for index in range(total):
        due = start + index / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index, due)))
    await asyncio.gather(*tasks)
    result.seconds = time.perf_counter() - start
    while not pool.empty():
        _, writer = pool.get_nowait()
        writer.close()
    return result
