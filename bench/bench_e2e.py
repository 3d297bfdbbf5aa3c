"""End to end: detections posted at a fixed rate to ``copbridge serve``, delivered to taky and
received by a TAK client connected to taky. Prints the time from each 202 to the event's arrival
at the client (p50, p99), and, as the ceiling in the same run, the same client's round trip of a
ping through the same taky (what taky alone adds).

    python bench/bench_e2e.py [--rate 500] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.api.conftest import EXAMPLE
from tests.delivery.taky import Taky
from tests.system.harness import Receiver
from tests.system.processes import start_serve

from bench.loadgen import open_loop, request_bytes
from copbridge.cot import ping_event, to_xml
from copbridge.security.keys import mint_key

HOST = "127.0.0.1"


class TimedReceiver(Receiver):
    """The harness's TAK client, also noting when each uid first arrived."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.first: dict[str, float] = {}
        self.pongs: list[float] = []

    def _record(self, event: bytes) -> None:
        now = time.perf_counter()
        if b'type="t-x-c-t-r"' in event:
            self.pongs.append(now)
        start = event.find(b'uid="')
        if start >= 0:
            uid = event[start + 5 : event.find(b'"', start + 5)].decode()
            self.first.setdefault(uid, now)
        super()._record(event)


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    key = mint_key()[1]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        taky = Taky(work / "taky")
        taky.start()
        receiver = TimedReceiver(HOST, taky.port)
        serve = start_serve(
            work,
            env={
                "COPBRIDGE_DESTINATIONS": f"tcp://{HOST}:{taky.port}",
                "COPBRIDGE_BOOTSTRAP_KEY": key,
                "COPBRIDGE_LOG_LEVEL": "warning",
                "COPBRIDGE_RATE_LIMIT_CREDENTIAL": "10000000/second",
                "COPBRIDGE_RATE_LIMIT_IP": "10000000/second",
            },
        )
        try:
            receiver.connect()
            # The ceiling: what a message costs through taky to the same client.
            rtts = []
            assert receiver._sock is not None
            for _ in range(50):
                sent = time.perf_counter()
                before = len(receiver.pongs)
                receiver._sock.sendall(to_xml(ping_event(datetime.now(UTC), uid="bench-rtt")))
                while len(receiver.pongs) == before and time.perf_counter() - sent < 2:
                    time.sleep(0.0005)
                if len(receiver.pongs) > before:
                    rtts.append(receiver.pongs[-1] - sent)
            answered: dict[int, float] = {}
            lock = threading.Lock()

            def make(i: int) -> bytes:
                body = dict(
                    EXAMPLE,
                    id=f"e2e-{i}",
                    track_id=str(i),
                    time=datetime.now(UTC).isoformat(),
                )
                return request_bytes(
                    HOST,
                    serve.port,
                    "/api/v1/detections",
                    json.dumps(body).encode(),
                    {"Authorization": f"Bearer {key}"},
                )

            def done(i: int, status: int, at: float) -> None:
                if status == 202:
                    with lock:
                        answered[i] = at

            result = asyncio.run(
                open_loop(HOST, serve.port, make, args.rate, args.seconds, on_done=done)
            )
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                missing = [i for i in answered if f"copbridge.uav-7.{i}" not in receiver.first]
                if not missing:
                    break
                time.sleep(0.2)
            delays = [
                receiver.first[f"copbridge.uav-7.{i}"] - at
                for i, at in answered.items()
                if f"copbridge.uav-7.{i}" in receiver.first
            ]
        finally:
            receiver.close()
            serve.stop()
            taky.stop()
    ms = [d * 1000 for d in delays]
    print(f"ingest at {args.rate:.0f}/s for {args.seconds:.0f} s: {result.summary()}")
    print(
        f"202 -> arrival at a taky client: {len(ms)} of {len(answered)} arrived; "
        f"p50 {statistics.median(ms):.2f} ms, p99 {_percentile(ms, 99):.2f} ms, "
        f"max {max(ms):.2f} ms (targets p50 <= 20 ms, p99 <= 100 ms)"
    )
    if rtts:
        rtt_ms = [r * 1000 for r in rtts]
        print(
            f"ceiling, a ping through the same taky to the same client: "
            f"p50 {statistics.median(rtt_ms):.2f} ms, p99 {_percentile(rtt_ms, 99):.2f} ms"
        )


if __name__ == "__main__":
    main()
