"""Ingest benchmark: our POST /api/v1/detections against a bare FastAPI echo route (the ceiling),
same uvicorn settings, same load generator, in one run; then the batch endpoint on SQLite and
PostgreSQL, and live single detections beside batch uploads on SQLite. Prints ratios and
latencies; asserts nothing (machines here are noisy).

    python bench/bench_api.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.api.conftest import EXAMPLE
from tests.system.processes import free_port

from bench.loadgen import Result, closed_loop, open_loop, request_bytes
from copbridge.security.keys import mint_key

HOST = "127.0.0.1"
PG_ADMIN = os.environ.get("COPBRIDGE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
UVICORN_FLAGS = [
    "--loop",
    "uvloop",
    "--http",
    "httptools",
    "--no-access-log",
    "--log-level",
    "warning",
]


def _wait(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
        except httpx.HTTPError:
            time.sleep(0.1)
        else:
            return
    raise RuntimeError(f"{url} did not come up")


@contextmanager
def ceiling() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.ceiling_app:app",
            "--host",
            HOST,
            "--port",
            str(port),
            *UVICORN_FLAGS,
        ],
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        _wait(f"http://{HOST}:{port}/docs", proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def copbridge(database_url: str, key: str, workdir: Path) -> Iterator[int]:
    port = free_port()
    env = {
        **os.environ,
        "COPBRIDGE_HOST": HOST,
        "COPBRIDGE_PORT": str(port),
        "COPBRIDGE_DATABASE_URL": database_url,
        "COPBRIDGE_DATA_DIR": str(workdir),
        "COPBRIDGE_DESTINATIONS": "tcp://127.0.0.1:9",
        "COPBRIDGE_RUN_WORKER": "false",
        "COPBRIDGE_FEED": "off",
        "COPBRIDGE_LOG_LEVEL": "warning",
        "COPBRIDGE_BOOTSTRAP_KEY": key,
        # The benchmark measures the pipeline, not the limiter: lift the limits far out of reach.
        "COPBRIDGE_RATE_LIMIT_CREDENTIAL": "10000000/second",
        "COPBRIDGE_RATE_LIMIT_IP": "10000000/second",
    }
    log = (workdir / f"serve-{port}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "copbridge", "serve"], env=env, stdout=log, stderr=log
    )
    try:
        _wait(f"http://{HOST}:{port}/livez", proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


def _detection(index: int, run: str) -> bytes:
    body = dict(EXAMPLE, id=f"{run}-{index}", track_id=str(index % 500))
    return json.dumps(body).encode()


@contextmanager
def pg_database() -> Iterator[str]:
    name = f"copbridge_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument(
        "--batch-only", action="store_true", help="only the batch endpoint, SQLite then PostgreSQL"
    )
    args = parser.parse_args()
    key = mint_key()[1]
    auth = {"Authorization": f"Bearer {key}"}
    if args.batch_only:
        _batches(key, auth, args.seconds)
        return
    sample = _detection(0, "size")
    print(
        f"body size {len(sample)} bytes; {args.seconds:.0f} s per phase; "
        f"{args.connections} connections"
    )

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with ceiling() as cport:
            ceil = asyncio.run(
                closed_loop(
                    HOST,
                    cport,
                    lambda i: request_bytes(HOST, cport, "/echo", _detection(i, "c"), {}),
                    args.connections,
                    args.seconds,
                )
            )
        print(f"ceiling (bare FastAPI echo):        {ceil.summary()}")

        with copbridge(f"sqlite:///{work / 'bench.db'}", key, work) as port:

            def make(i: int, run: str = "s") -> bytes:
                return request_bytes(HOST, port, "/api/v1/detections", _detection(i, run), auth)

            ours = asyncio.run(closed_loop(HOST, port, make, args.connections, args.seconds))
            print(f"copbridge single (SQLite, durable): {ours.summary()}")
            fixed = asyncio.run(
                open_loop(HOST, port, lambda i: make(i, "r"), args.rate, args.seconds)
            )
            print(f"copbridge at {args.rate:.0f}/s fixed rate:       {fixed.summary()}")
            sqlite_batch = _batch(port, auth, args.seconds, "sb")
            beside = _singles_beside_batches(port, auth, args.seconds)
            print(f"singles at 200/s beside back-to-back 1,000-batches: {beside.summary()}")
        print(f"ratio single / ceiling = {ours.rate / ceil.rate:.2f} (target >= 0.5)")
        print(
            f"fixed {args.rate:.0f}/s: p50 {fixed.percentile(50) * 1000:.2f} ms, "
            f"p99 {fixed.percentile(99) * 1000:.2f} ms (target p99 <= 20 ms)"
        )

        with pg_database() as url, copbridge(url, key, work) as port:
            pg_batch = _batch(port, auth, args.seconds, "pb")
        print(
            f"batch endpoint, durable: SQLite {sqlite_batch:,.0f} detections/s, "
            f"PostgreSQL {pg_batch:,.0f} detections/s (target >= 20,000/s on SQLite)"
        )


def _batches(key: str, auth: dict[str, str], seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with copbridge(f"sqlite:///{work / 'bench.db'}", key, work) as port:
            sqlite_batch = _batch(port, auth, seconds, "sb")
        with pg_database() as url, copbridge(url, key, work) as port:
            pg_batch = _batch(port, auth, seconds, "pb")
    print(
        f"batch endpoint, durable: SQLite {sqlite_batch:,.0f} detections/s, "
        f"PostgreSQL {pg_batch:,.0f} detections/s (target >= 20,000/s on SQLite)"
    )


def _singles_beside_batches(port: int, auth: dict[str, str], seconds: float) -> Result:
    """Live single detections at a fixed 200/s while another client uploads batches: how long
    a live feed waits behind an archive upload.

    The uploader runs in a process of its own and sends ready-made bytes: in this process its
    JSON encoding held the GIL, and the live requests' own load generator waited for it, which
    the latencies then counted against the service."""
    uploader = multiprocessing.get_context("spawn").Process(
        target=_upload_batches, args=(port, auth, seconds + 2.0), daemon=True
    )
    uploader.start()
    try:
        time.sleep(1.5)  # the uploader's interpreter starts and its first batch is on the way
        return asyncio.run(
            open_loop(
                HOST,
                port,
                lambda i: request_bytes(
                    HOST, port, "/api/v1/detections", _detection(i, "live"), auth
                ),
                200,
                seconds,
            )
        )
    finally:
        uploader.join(seconds + 30)
        if uploader.is_alive():
            uploader.kill()


def _upload_batches(port: int, auth: dict[str, str], seconds: float) -> None:
    """Back-to-back 1,000-item batches, new ids each (in the uploader process)."""
    marker = b"#upload-no#"
    items = [dict(EXAMPLE, id=f"ub-#upload-no#-{j}", track_id=str(j % 500)) for j in range(1000)]
    template = request_bytes(
        HOST, port, "/api/v1/detections/batch", json.dumps(items).encode(), auth
    )
    asyncio.run(
        closed_loop(
            HOST, port, lambda i: template.replace(marker, f"{i:011d}".encode()), 1, seconds
        )
    )


def _batch(port: int, auth: dict[str, str], seconds: float, run: str) -> float:
    """Two uploaders sending 1,000-item batches back to back; every batch has ids never sent
    before (a repeated body would be answered as duplicates and flatter the rate)."""
    marker = b"#batch-no#"
    items = [dict(EXAMPLE, id=f"{run}-#batch-no#-{j}", track_id=str(j % 500)) for j in range(1000)]
    template = request_bytes(
        HOST, port, "/api/v1/detections/batch", json.dumps(items).encode(), auth
    )

    def make(i: int) -> bytes:
        return template.replace(marker, f"{i:010d}".encode())  # same length: same header

    result = asyncio.run(closed_loop(HOST, port, make, 2, seconds))
    accepted = result.statuses.get(202, 0) * 1000
    print(f"  batch phase: {result.summary()}")
    return accepted / result.seconds


if __name__ == "__main__":
    main()
