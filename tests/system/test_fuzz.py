"""Schemathesis against the served OpenAPI, every operation, with the admin credential: no 5xx,
every answer matches its documented status, content type, headers and schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.system.fuzz import fuzz

pytestmark = pytest.mark.timeout(300)


def test_every_operation_survives_generated_input_within_its_schema(tmp_path: Path) -> None:
    run = fuzz(tmp_path, max_examples=5)
    assert run.returncode == 0, run.output[-8000:]
    assert run.operations >= 18, run.output[-2000:]  # every operation was exercised
    assert run.cases >= 500, run.output[-2000:]
    assert run.server_errors_in_log == 0, run.serve_log[-4000:]
