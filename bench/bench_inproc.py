"""Ingest cost in CPU time, in process: the ASGI apps are called directly (no sockets, no load
generator), 32 requests in flight, and the process's CPU time is divided by the requests served.

bench_api.py measures throughput over HTTP with the load generator on the same two cores, so its
figures mix our cost with the generator's. CPU time per request is the server's own cost: the
figure to watch while changing the hot path (it still drifts with the machine: compare the
rounds, which alternate the two sides). It prints, side by side:

- the ceiling (bench/ceiling_app.py: parse and echo the body) and POST /api/v1/detections
  (full pipeline, durable SQLite commit; the writer thread's and the prepare helper process's
  CPU count too), and their ratio;
- per detection, the same ceiling against POST /api/v1/detections/batch with 1,000 items.

It does not include what uvicorn spends reading and writing the socket (the same for both, about
70 us a request here), so the ratio printed is lower than bench_api's throughput ratio.

    python bench/bench_inproc.py [--requests 6000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.api.conftest import EXAMPLE

from bench.ceiling_app import app as ceiling_app
from copbridge.api.app import create_app
from copbridge.config import load_settings
from copbridge.logs import configure_logging
from copbridge.runtime import tune_garbage_collector
from copbridge.security.keys import mint_key

IN_FLIGHT = 32
Asgi = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[MutableMapping[str, Any]]],
        Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ],
    Awaitable[None],
]


async def call(app: Asgi, path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    """One POST through the ASGI app; the response status."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [*headers, (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 9000),
        "state": {},
    }
    delivered = False

    async def receive() -> MutableMapping[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        raise AssertionError("unreachable")

    status = 0

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])

    await app(scope, receive, send)
    return status


async def cpu_per_request(
    app: Asgi, path: str, make: Callable[[int], bytes], headers: list[tuple[bytes, bytes]], n: int
) -> tuple[float, Counter[int]]:
    """Process CPU seconds per request over ``n`` requests, IN_FLIGHT at a time."""
    bodies = [make(i) for i in range(n)]  # built before the clock starts
    statuses: Counter[int] = Counter()

    async def client(first: int) -> None:
        for i in range(first, n, IN_FLIGHT):
            statuses[await call(app, path, bodies[i], headers)] += 1

    started = time.process_time() + children_cpu()
    await asyncio.gather(*(client(k) for k in range(IN_FLIGHT)))
    return (time.process_time() + children_cpu() - started) / n, statuses


def children_cpu() -> float:
    """CPU seconds used so far by this process's live children (copbridge's prepare helper):
    the work it takes off the event loop still counts."""
    total = 0
    tick = os.sysconf("SC_CLK_TCK")
    for children in Path("/proc/self/task").glob("*/children"):
        for pid in children.read_text().split():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except FileNotFoundError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def _detection(run: str, i: int) -> dict[str, Any]:
    return dict(EXAMPLE, id=f"{run}-{i}", track_id=str(i % 500))


async def main(requests: int, rounds: int) -> None:
    key = mint_key()[1]
    work = Path(tempfile.mkdtemp(prefix="copbridge-inproc-"))
    settings = load_settings(
        database_url=f"sqlite:///{work / 'bench.db'}",
        data_dir=work,
        destinations="tcp://127.0.0.1:9",
        run_worker=False,
        feed="off",
        bootstrap_key=key,
        log_level="warning",
        rate_limit_credential="10000000/second",
        rate_limit_ip="10000000/second",
    )
    configure_logging(settings.log_format, settings.log_level)
    ours = create_app(settings)
    plain = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")]
    authed = [*plain, (b"authorization", f"Bearer {key}".encode())]
    batch_size = 1000
    batches = max(2, requests // batch_size)

    def one(run: str) -> Callable[[int], bytes]:
        return lambda i: json.dumps(_detection(run, i)).encode()

    def many(run: str) -> Callable[[int], bytes]:
        return lambda i: json.dumps(
            [_detection(f"{run}{i}", j) for j in range(batch_size)]
        ).encode()

    single: list[tuple[float, float]] = []
    batch: list[tuple[float, float]] = []
    async with ours.router.lifespan_context(ours):
        tune_garbage_collector()  # as `copbridge serve` does before it serves
        await cpu_per_request(ours, "/api/v1/detections", one("warm"), authed, 1000)
        for r in range(rounds):  # alternated, so drift hits both sides alike
            ceiling, _ = await cpu_per_request(ceiling_app, "/echo", one(f"c{r}"), plain, requests)
            cost, statuses = await cpu_per_request(
                ours, "/api/v1/detections", one(f"s{r}"), authed, requests
            )
            assert set(statuses) == {202}, statuses
            single.append((ceiling, cost))
            big_ceiling, _ = await cpu_per_request(
                ceiling_app, "/echo", many(f"C{r}-"), plain, batches
            )
            big, statuses = await cpu_per_request(
                ours, "/api/v1/detections/batch", many(f"B{r}-"), authed, batches
            )
            assert set(statuses) == {202}, statuses
            batch.append((big_ceiling / batch_size, big / batch_size))
            print(
                f"round {r + 1}: single {ceiling * 1e6:.0f} us ceiling, {cost * 1e6:.0f} us ours;"
                f" batch, per detection {big_ceiling / batch_size * 1e6:.1f} us ceiling, "
                f"{big / batch_size * 1e6:.1f} us ours"
            )
    for name, pairs in (("single request", single), ("batch, per detection", batch)):
        ceiling = statistics.median(c for c, _ in pairs)
        cost = statistics.median(o for _, o in pairs)
        print(
            f"{name}: ceiling {ceiling * 1e6:.1f} us CPU, copbridge {cost * 1e6:.1f} us CPU; "
            f"ceiling / copbridge = {ceiling / cost:.2f} (median of {len(pairs)} rounds)"
        )
    print(
        f"batch CPU bound on one core: {1 / statistics.median(o for _, o in batch):,.0f} "
        "detections/s (target 20,000/s)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import uvloop

    uvloop.run(main(args.requests, args.rounds))
