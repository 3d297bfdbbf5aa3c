"""Schemathesis against a real ``copbridge serve``: every operation of the served OpenAPI, with
the admin credential, checked for server errors and for answers that break the documented schema.

Shared by the CI test (few examples) and ``make drills`` (≥ 1,000 cases).
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ADMIN_KEY
from tests.system.drills import DRILL_ENV
from tests.system.processes import start_serve

ST = str(Path(sys.executable).parent / "st")
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)
FUZZ_ENV = {**DRILL_ENV, "COPBRIDGE_RATE_LIMIT_AUTH": "1000000/second"}


@dataclass(frozen=True)
class FuzzRun:
    returncode: int
    cases: int
    operations: int
    output: str
    serve_log: str

    @property
    def server_errors_in_log(self) -> int:
        return self.serve_log.count('"status": 500')


def fuzz(
    workdir: Path,
    *,
    max_examples: int,
    seed: int = 8,
    timeout_s: int = 900,
    max_time_s: int | None = None,
) -> FuzzRun:
    """Serve on SQLite with a file destination, run ``st run`` against it, stop it.

    ``max_time_s`` makes schemathesis repeat fuzzing and stateful runs until it is spent."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**FUZZ_ENV, "COPBRIDGE_DESTINATIONS": f"file://{workdir / 'events.cot'}"}
    serve = start_serve(workdir, env)
    try:
        result = subprocess.run(
            [
                ST,
                "run",
                f"{serve.url}/openapi.json",
                "--header",
                f"Authorization: Bearer {ADMIN_KEY}",
                "--checks",
                ",".join(CHECKS),
                "--max-examples",
                str(max_examples),
                "--seed",
                str(seed),
                "--workers",
                "1",
                "--no-color",
                *([] if max_time_s is None else ["--max-time", str(max_time_s)]),
            ],
            capture_output=True,
            text=True,
            cwd=workdir,
            timeout=timeout_s,
            check=False,
        )
    finally:
        serve.stop()
    output = result.stdout + result.stderr
    cases = re.search(r"(\d+) generated", output)
    operations = re.search(r"Tested: (\d+)", output)
    return FuzzRun(
        result.returncode,
        int(cases.group(1)) if cases else 0,
        int(operations.group(1)) if operations else 0,
        output,
        serve.output(),
    )
