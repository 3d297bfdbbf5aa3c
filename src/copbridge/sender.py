"""``copbridge send``: post JSON / JSON-lines detections to a running service in batches.

Retries what the service asks to be retried (503, 429 with Retry-After) a bounded number of
times, and sums up what was accepted, duplicated and rejected, with the reasons.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

BATCH_SIZE = 500
MAX_ATTEMPTS = 5


@dataclass
class Summary:
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return self.accepted + self.duplicates + self.rejected


def read_detections(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, value) for each detection: a JSON object, a JSON array, or JSON lines."""
    text = path.read_text("utf-8")
    stripped = text.strip()
    try:
        whole = json.loads(stripped) if stripped else []
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, dict):
        yield f"{path}", whole
        return
    if isinstance(whole, list):
        for index, item in enumerate(whole):
            yield f"{path}[{index}]", item
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{number}", json.loads(line)
        except json.JSONDecodeError as exc:
            yield f"{path}:{number}", _Unparsable(str(exc))


@dataclass(frozen=True)
class _Unparsable:
    error: str


def send(
    client: httpx.Client,
    items: Iterator[tuple[str, Any]],
    summary: Summary,
    progress: Callable[[int], None] = lambda _: None,
    batch_size: int = BATCH_SIZE,
) -> None:
    batch: list[tuple[str, Any]] = []
    for where, value in items:
        if isinstance(value, _Unparsable):
            summary.rejected += 1
            summary.reasons[f"not JSON: {value.error}"] += 1
            progress(1)
            continue
        batch.append((where, value))
        if len(batch) >= batch_size:
            _post(client, batch, summary)
            progress(len(batch))
            batch = []
    if batch:
        _post(client, batch, summary)
        progress(len(batch))


def _post(client: httpx.Client, batch: list[tuple[str, Any]], summary: Summary) -> None:
    answer = _with_retries(client, [value for _, value in batch])
    if answer.status_code not in (202, 207):
        summary.rejected += len(batch)
        summary.reasons[f"HTTP {answer.status_code}: {_detail(answer)}"] += len(batch)
        return
    body = answer.json()
    for result in body["results"]:
        if result["status"] == 202:
            if result["answer"]["duplicate"]:
                summary.duplicates += 1
            else:
                summary.accepted += 1
            continue
        summary.rejected += 1
        error = result.get("error") or {}
        errors = error.get("errors") or [error]
        message = str(errors[0].get("message", "rejected"))
        # Reasons are grouped without the item index so a summary stays short.
        summary.reasons[f"{result['status']}: {_without_index(message)}"] += 1


def _with_retries(client: httpx.Client, values: list[Any]) -> httpx.Response:
    delay = 0.5
    for attempt in range(MAX_ATTEMPTS):
        try:
            answer = client.post("/api/v1/detections/batch", json={"detections": values})
        except httpx.TransportError:
            if attempt == MAX_ATTEMPTS - 1:
                raise
        else:
            if answer.status_code not in (429, 503) or attempt == MAX_ATTEMPTS - 1:
                return answer
            delay = float(answer.headers.get("retry-after", delay))
        time.sleep(min(delay, 30.0))
        delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover


def _detail(answer: httpx.Response) -> str:
    try:
        return str(answer.json().get("detail", answer.text))[:200]
    except ValueError:
        return answer.text[:200]


def _without_index(message: str) -> str:
    head, sep, tail = message.partition("].")
    return tail if sep and head.startswith("detections[") else message
