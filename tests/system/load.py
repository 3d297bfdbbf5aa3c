"""Run bench/locustfile.py headless against a real ``copbridge serve`` and read its CSV stats.

Shared by the CI smoke run (tests/system/test_load_smoke.py) and the long runs (bench/drills.py).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ADMIN_KEY
from tests.system.drills import DRILL_ENV
from tests.system.processes import Serve, start_serve

ROOT = Path(__file__).resolve().parents[2]
LOCUST = str(Path(sys.executable).parent / "locust")


@dataclass(frozen=True)
class LoadRun:
    returncode: int
    rows: list[dict[str, str]]  # locust's <prefix>_stats.csv, one row per request name
    output: str
    serve_log: str

    def row(self, name: str) -> dict[str, str]:
        return next(r for r in self.rows if r["Name"] == name)


def serve_for_load(workdir: Path, **env: str) -> Serve:
    """SQLite, a file destination, rate limits out of the way."""
    workdir.mkdir(parents=True, exist_ok=True)
    destination = f"file://{workdir / 'events.cot'}"
    return start_serve(workdir, {**DRILL_ENV, "COPBRIDGE_DESTINATIONS": destination, **env})


def run_locust(
    workdir: Path, serve: Serve, *, users: int, seconds: int, classes: tuple[str, ...] = ()
) -> LoadRun:
    prefix = workdir / "locust"
    result = subprocess.run(
        [
            LOCUST,
            "-f",
            str(ROOT / "bench" / "locustfile.py"),
            "--headless",
            "-u",
            str(users),
            "-r",
            str(users),
            "-t",
            f"{seconds}s",
            "--stop-timeout",
            "30",
            "--csv",
            str(prefix),
            "--host",
            serve.url,
            "--only-summary",
            *classes,
        ],
        env={**os.environ, "COPBRIDGE_API_KEY": ADMIN_KEY},
        capture_output=True,
        text=True,
        cwd=workdir,
        timeout=seconds + 120,
        check=False,
    )
    with Path(f"{prefix}_stats.csv").open() as stats:
        rows = list(csv.DictReader(stats))
    return LoadRun(result.returncode, rows, result.stdout + result.stderr, serve.output())
