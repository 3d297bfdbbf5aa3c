"""``copbridge send`` against a real ``serve``: batches, summary with reasons, exit status."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.api.conftest import example
from tests.system.processes import COPBRIDGE, start_serve


def test_send_posts_json_lines_and_sums_up(tmp_path: Path) -> None:
    lines = [json.dumps(example(id=f"s{i}")) for i in range(1200)]
    lines[10] = json.dumps(example(id="bad", confidence=7))
    lines[20] = "{oops"
    lines.append(json.dumps(example(id="s0")))  # a retry of the first one
    source = tmp_path / "detections.jsonl"
    source.write_text("\n".join(lines) + "\n")
    serve = start_serve(tmp_path, env={"COPBRIDGE_RUN_WORKER": "false"})
    try:
        result = subprocess.run(
            [*COPBRIDGE, "send", str(source), "--url", serve.url],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={**os.environ, **serve.client_env()},
        )
    finally:
        serve.stop()
    assert result.returncode == 1, result.stderr
    first = result.stdout.splitlines()[0]
    assert first == "accepted 1198, duplicates 1, rejected 2 of 1201"
    assert "confidence" in result.stdout
    assert "not JSON" in result.stdout
