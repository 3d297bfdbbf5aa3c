"""Start and stop real copbridge processes on free loopback ports for system tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import ADMIN_HEADERS, ADMIN_KEY

COPBRIDGE = [sys.executable, "-m", "copbridge"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Serve:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client_env(self) -> dict[str, str]:
        """Environment for a ``copbridge`` client command talking to this service."""
        return {"COPBRIDGE_URL": self.url, "COPBRIDGE_API_KEY": ADMIN_KEY}

    @property
    def headers(self) -> dict[str, str]:
        """Credentials of the bootstrap admin key that ``start_serve`` configures."""
        return dict(ADMIN_HEADERS)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise


def run_copbridge(
    args: Sequence[str], env: Mapping[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``copbridge ARGS`` to completion with ``env`` over this environment; output captured."""
    return subprocess.run(
        [*COPBRIDGE, *args],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_serve(
    workdir: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,  # under a loaded CI, serve waits up to 15 s for its niced batch helper
    *,
    port: int | None = None,
    args: Sequence[str] = (),
) -> Serve:
    """``copbridge serve [args]`` in ``workdir``; ``port`` again to restart on the same address."""
    port = port or free_port()
    log = workdir / f"serve-{port}.log"
    full_env = {
        **os.environ,
        "COPBRIDGE_HOST": "127.0.0.1",
        "COPBRIDGE_PORT": str(port),
        "COPBRIDGE_DATABASE_URL": f"sqlite:///{workdir / 'copbridge.db'}",
        "COPBRIDGE_DATA_DIR": str(workdir / "data"),
        "COPBRIDGE_FEED": "off",
        "COPBRIDGE_LOG_FORMAT": "json",
        "COPBRIDGE_BOOTSTRAP_KEY": ADMIN_KEY,
        **(env or {}),
    }
    with log.open("ab") as out:  # a restart on the same port appends to the same log
        proc = subprocess.Popen(
            [*COPBRIDGE, "serve", *args],
            cwd=workdir,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    serve = Serve(proc, port, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode}:\n{serve.output()}")
        try:
            if httpx.get(f"{serve.url}/livez", timeout=1).status_code == 200:
                return serve
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    serve.stop(signal.SIGKILL)
    raise RuntimeError(f"serve did not answer /livez within {timeout} s:\n{serve.output()}")
