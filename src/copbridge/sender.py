"""``copbridge send``: post detections from files to a running service in batches.

What a user can count on:
- Every detection is sent as written (its exact JSON text), and one without an ``id`` (or with
  ``"id": null``) gets one made from its text (``sent-`` + SHA-256), so a retry after a lost
  answer, or a second run of the same file, is answered as a duplicate and never stored twice.
  The id is put first in the text; a null one is replaced, and that object is written anew.
- Batches hold at most :data:`BATCH_ITEMS` detections and :data:`BATCH_BYTES` bytes; a batch the
  service finds too large (413) is split in two until it fits or one detection is left.
- 429 and 503 are retried after the service's ``Retry-After`` (seconds or an HTTP date), lost
  connections with a growing pause, each a bounded number of times; a batch still refused so
  after the last try stops the run, and nothing after it is sent.
- Every refusal is counted with its reason and the first places (``file:line``) it happened.
- A 5xx other than 503 (500, 502, 504, ...) says nothing of what was stored, so it is retried
  like 503; when every try of a batch ends without an answer that tells, sending stops there.
- When the service cannot go on (unreachable, refusing the credential, or no answer that
  tells) sending stops with :class:`Stopped`. The summary still counts every answer received,
  and names apart the batch left in doubt (the service may have stored it).
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from copbridge.documents import Document, Item, Unreadable, kind_of

_WHY_RETRIED = {429: "rate limited (429)", 503: "store busy (503)"}


def _stored_unknown(answer: httpx.Response) -> bool:
    """A 503 that says its commit was cut off (``"stored": "unknown"``, for the answer or an
    item): the batch may be stored, like one whose answer was lost."""
    try:
        body = answer.json()
    except ValueError:
        return False
    if not isinstance(body, dict):
        return False
    results = body.get("results")
    items = [r for r in results if isinstance(r, dict)] if isinstance(results, list) else []
    return body.get("stored") == "unknown" or any(_item_stored_unknown(r) for r in items)


def _item_stored_unknown(result: dict[str, Any]) -> bool:
    """One batch item's 503 whose commit was cut off: it may be stored."""
    error = result.get("error")
    return isinstance(error, dict) and error.get("stored") == "unknown"


def _results(answer: httpx.Response, sent: int) -> list[dict[str, Any]] | None:
    """A batch answer's per-item results, one per detection sent, each index once; None when
    the answer is not that (a proxy's page, a truncated body)."""
    try:
        results = answer.json()["results"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(results, list) or len(results) != sent:
        return None
    indexes = [r.get("index") if isinstance(r, dict) else None for r in results]
    if sorted(i for i in indexes if isinstance(i, int)) != list(range(sent)):
        return None
    if not all(isinstance(r.get("status"), int) for r in results):
        return None
    return results


def _in_doubt(status: int) -> bool:
    """An answer that does not say whether the batch was stored: every 5xx but 503 (which the
    service sends when nothing was stored; one whose commit was cut off says so, see
    :func:`_stored_unknown`). A 500 is its own unexpected failure; a 502
    or 504 comes from a gateway between us and it, which may have passed the batch on and
    then lost or waited too long for the answer. They are retried, as the ids make that safe."""
    return status >= 500 and status != 503


BATCH_ITEMS = 500
BATCH_BYTES = 4_000_000  # a third of the service's default 12 MiB body limit
MAX_ATTEMPTS = 5
MAX_WAIT_S = 60.0
PLACES_KEPT = 5


@dataclass
class Reason:
    count: int = 0
    places: list[str] = field(default_factory=list)

    def note(self, place: str, count: int = 1) -> None:
        self.count += count
        if len(self.places) < PLACES_KEPT:
            self.places.append(place)

    def where(self) -> str:
        """``at f:1, f:2, ...``: the places kept, and that there were more."""
        more = ", ..." if self.count > len(self.places) else ""
        return f"at {', '.join(self.places)}{more}"


@dataclass
class Summary:
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    #: Duplicates answered to a retry after a lost connection or an answer that did not tell
    #: (a 5xx other than 503): that attempt may have stored them (this run) or an earlier run
    #: did; either way they are stored once.
    duplicates_after_retry: int = 0
    #: Sent, and no answer told whether they were stored (the connection was lost, or a 5xx
    #: other than 503 came back): stored or not, no one can say.
    in_doubt: int = 0
    reasons: dict[str, Reason] = field(default_factory=dict)
    #: Accepted with a warning (stale on arrival: stored, but it will expire unsent).
    stale_on_arrival: Reason = field(default_factory=Reason)
    #: Answered 503 (the store busy) to every try: not stored; sending them again will do.
    not_stored: Reason = field(default_factory=Reason)

    @property
    def total(self) -> int:
        return self.accepted + self.duplicates + self.rejected

    def exit_status(self) -> int:
        """``copbridge send``'s status for a run that went to its end: 3 when some detection
        was left in doubt (sent, and no answer told whether it was stored) or not stored (the
        store was busy to every try), 1 when some were refused, 0 when every one is stored."""
        if self.in_doubt or self.not_stored.count:
            return 3
        return 1 if self.rejected else 0

    def refuse(self, reason: str, place: str, count: int = 1) -> None:
        self.rejected += count
        self.reasons.setdefault(reason, Reason()).note(place, count)

    def lines(self) -> list[str]:
        head = (
            f"accepted {self.accepted}, duplicates {self.duplicates}, "
            f"rejected {self.rejected} of {self.total}"
        )
        out = [head]
        if self.duplicates_after_retry:
            out.append(
                f"  {self.duplicates_after_retry} of the duplicates were answered to a retry "
                "after a lost connection or a 5xx (stored once, by that attempt or an earlier run)"
            )
        if self.in_doubt:
            out.append(
                f"  {self.in_doubt} more were sent and no answer told whether they were stored "
                "(send the file again to know: stored ones come back as duplicates)"
            )
        busy = self.not_stored
        if busy.count:
            out.append(
                f"  {busy.count} more were not stored: the store was busy (503) to every try; "
                f"send the same files again ({busy.where()})"
            )
        stale = self.stale_on_arrival
        if stale.count:
            out.append(
                f"  {stale.count} of the accepted were stale on arrival: stored, but they will "
                f"expire without being delivered ({stale.where()})"
            )
        ranked = sorted(self.reasons.items(), key=lambda kv: -kv[1].count)
        for reason, entry in ranked[:20]:
            out.append(f"  {entry.count} x {reason} ({entry.where()})")
        if len(ranked) > 20:
            out.append(f"  ... and {len(ranked) - 20} other reasons")
        return out


@dataclass(frozen=True, slots=True)
class Pending:
    """One detection ready to post: where it came from and the JSON text to send."""

    place: str
    text: str


class Stopped(Exception):
    """The service cannot take more detections from this run; the message says why.

    ``maybe_stored`` is true when the last batch was sent and no answer told what became of it
    (the connection was lost after the request went out, or a 5xx other than 503 came back):
    the service may have stored it.
    """

    def __init__(self, message: str, *, maybe_stored: bool = False) -> None:
        super().__init__(message)
        self.maybe_stored = maybe_stored


def pending(source: str, item: Item, summary: Summary) -> Pending | None:
    """The detection to send for one item of a file, or None (and a refusal counted)."""
    place = f"{source}:{item.line}"
    if isinstance(item, Unreadable):
        summary.refuse(f"not JSON: {item.error}", place)
        return None
    if not isinstance(item.value, dict):
        summary.refuse(f"not a JSON object but {kind_of(item.value)}", place)
        return None
    if item.value.get("id") is not None:
        return Pending(place, item.text)
    made = content_id(item.text)
    if "id" not in item.value:
        return Pending(place, with_id(item, made))
    # "id": null, which the service reads as no id (it would make a new one on every run).
    try:
        # ensure_ascii: a lone surrogate the file spelt as an escape stays one, not raw text
        text = json.dumps({**item.value, "id": made}, allow_nan=False)
    except ValueError:  # a number beyond float (read as inf): sent as written, to be refused
        return Pending(place, item.text)
    return Pending(place, text)


def content_id(text: str) -> str:
    """The id given to a detection sent without one: the same text always gets the same id."""
    return "sent-" + hashlib.sha256(text.encode()).hexdigest()[:40]


def with_id(item: Document, detection_id: str) -> str:
    """The object's text with ``"id"`` put first (the rest kept byte for byte)."""
    body = item.text[1:].lstrip()
    separator = "" if body.startswith("}") else ","
    return '{"id":' + json.dumps(detection_id) + separator + body


class Sender:
    """Posts detections in batches through ``client`` and sums the answers up in ``summary``."""

    def __init__(
        self,
        client: httpx.Client,
        summary: Summary,
        *,
        on_wait: Callable[[float, str], None] = lambda _s, _why: None,
        sleep: Callable[[float], None] = time.sleep,
        batch_items: int = BATCH_ITEMS,
        batch_bytes: int = BATCH_BYTES,
    ) -> None:
        self.client = client
        self.summary = summary
        self.on_wait = on_wait
        self.sleep = sleep
        self.batch_items = batch_items
        self.batch_bytes = batch_bytes

    def send(self, detections: Iterable[Pending]) -> None:
        for batch in self.batches(detections):
            self.post(batch)

    def batches(self, detections: Iterable[Pending]) -> Iterator[list[Pending]]:
        batch: list[Pending] = []
        size = 0
        for detection in detections:
            cost = len(detection.text.encode()) + 1
            if batch and (len(batch) >= self.batch_items or size + cost > self.batch_bytes):
                yield batch
                batch, size = [], 0
            batch.append(detection)
            size += cost
        if batch:
            yield batch

    def post(self, batch: list[Pending], *, retried: bool = False, round_: int = 1) -> None:
        """Send one batch (split in halves while it is too large) and count its answers.

        Raises :class:`Stopped` naming this batch's first detection as the first one not
        sent, or, when the batch went out and no answer came, the detections that may have
        been stored (counted in ``summary.in_doubt``).
        """
        try:
            answer, lost = self._with_retries(batch)
        except Stopped as exc:
            raise self._stopped(batch, str(exc), maybe_stored=retried or exc.maybe_stored) from None
        retried = retried or lost  # (a lost try of a batch may have stored its halves too)
        status = answer.status_code
        if status == 413 and len(batch) > 1:
            half = len(batch) // 2
            self.post(batch[:half], retried=retried)
            self.post(batch[half:], retried=retried)
            return
        if status in (401, 403):
            why = f"the service refused the credential ({status}: {_detail(answer)})"
            raise self._stopped(batch, why, maybe_stored=retried)
        if status in (404, 405):  # no batch endpoint there: every batch would get the same
            why = (
                f"HTTP {status} from {self.client.base_url}/api/v1/detections/batch "
                "(is the URL the service's base URL, without /api/v1?)"
            )
            raise self._stopped(batch, why, maybe_stored=retried)
        if status not in (202, 207):
            for detection in batch:
                self.summary.refuse(f"HTTP {status}: {_detail(answer)}", detection.place)
            return
        results = _results(answer, len(batch))
        if results is None:  # sent and taken, but the answer does not say what became of it
            why = f"the service's answer (HTTP {status}) does not list every detection sent"
            raise self._stopped(batch, why, maybe_stored=True)
        # Items the store could not take then (503 within a 207) go again, as a whole 503 does.
        again = [r for r in results if r["status"] == 503 and round_ < MAX_ATTEMPTS]
        going = {int(r["index"]) for r in again}
        for result in results:
            if int(result["index"]) not in going:
                self._count(result, batch[int(result["index"])], retried)
        if again:
            wait = min(0.5 * 2 ** (round_ - 1), MAX_WAIT_S)
            self.on_wait(wait, f"store busy (503) for {len(again)} of the batch")
            self.sleep(wait)
            doubt = retried or any(_item_stored_unknown(r) for r in again)
            subset = [batch[int(r["index"])] for r in again]
            self.post(subset, retried=doubt, round_=round_ + 1)

    def _stopped(self, batch: list[Pending], why: str, *, maybe_stored: bool) -> Stopped:
        """Why sending stops at ``batch``, and which detections that leaves in doubt."""
        if not maybe_stored:
            return Stopped(f"{why}; not sent: {batch[0].place} and all after it")
        self.summary.in_doubt += len(batch)
        return Stopped(
            f"{why}; in doubt: {_span(batch)}, which may have been stored (sending the file "
            "again tells: stored ones are answered as duplicates); not sent: all after them",
            maybe_stored=True,
        )

    def _count(self, result: dict[str, Any], detection: Pending, retried: bool) -> None:
        if result["status"] == 503 and (retried or _item_stored_unknown(result)):
            self.summary.in_doubt += 1  # its commit was cut off, or an earlier try's: maybe stored
            return
        if result["status"] == 503:
            # Still not taken after every try: not stored, and not refused for what it says
            # (it was counted "rejected" with the refusals, exit 1, as though sending it again
            # would not help).
            self.summary.not_stored.note(detection.place)
            return
        if result["status"] == 202:
            if result["answer"]["duplicate"]:
                self.summary.duplicates += 1
                self.summary.duplicates_after_retry += retried
            else:
                self.summary.accepted += 1
                warnings = result["answer"].get("warnings") or []
                if any(str(w).startswith("stale on arrival") for w in warnings):
                    self.summary.stale_on_arrival.note(detection.place)
            return
        error = result.get("error") or {}
        errors = error.get("errors") or [error]
        message = str(errors[0].get("message") or error.get("detail") or "rejected")
        # Grouped without the item's batch index, so that equal reasons add up.
        self.summary.refuse(f"{result['status']}: {_without_index(message)}", detection.place)

    def _with_retries(self, batch: list[Pending]) -> tuple[httpx.Response, bool]:
        body = ('{"detections":[' + ",".join(d.text for d in batch) + "]}").encode()
        headers = {"Content-Type": "application/json"}
        lost = False
        pause = 0.5
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                answer = self.client.post("/api/v1/detections/batch", content=body, headers=headers)
            except httpx.TransportError as exc:
                lost = lost or not _never_connected(exc)
                if attempt == MAX_ATTEMPTS or _certificate_refused(exc):
                    raise Stopped(
                        f"cannot reach {self.client.base_url}: {exc}", maybe_stored=lost
                    ) from None
                why = f"no answer from the service ({type(exc).__name__})"
            else:
                status = answer.status_code
                doubt = _in_doubt(status) or (status == 503 and _stored_unknown(answer))
                if status not in _WHY_RETRIED and not doubt:
                    return answer, lost
                if attempt == MAX_ATTEMPTS:
                    # Stop: after 429/503 nothing is stored for a while (the next batches
                    # would wait out the same tries in vain); after a 5xx or a lost try the
                    # batch is in doubt.
                    raise Stopped(
                        f"the last try was answered HTTP {status} ({_detail(answer)})"
                        + ("" if doubt or not lost else ", after a try that may have stored it"),
                        maybe_stored=lost or doubt,
                    )
                lost = lost or doubt
                pause = retry_after(answer.headers.get("retry-after"), pause)
                why = _WHY_RETRIED.get(status, f"an answer that does not tell (HTTP {status})")
            wait = min(pause, MAX_WAIT_S)
            self.on_wait(wait, why)
            self.sleep(wait)
            pause *= 2
        raise AssertionError("unreachable")  # pragma: no cover


def retry_after(header: str | None, default: float) -> float:
    """Seconds to wait from a Retry-After header: a number of seconds or an HTTP date."""
    if not header:
        return default
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return default
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _never_connected(exc: httpx.TransportError) -> bool:
    """No connection was made (refused, timed out, TLS refused), so the request never went out.

    Any other lost connection may have carried the whole request to a service that stored it.
    """
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))


def _span(batch: list[Pending]) -> str:
    if len(batch) == 1:
        return f"{batch[0].place} (1 detection)"
    return f"{batch[0].place} to {batch[-1].place} ({len(batch)} detections)"


def _certificate_refused(exc: httpx.TransportError) -> bool:
    """A TLS certificate that does not verify will not verify on a retry either."""
    return isinstance(exc, httpx.ConnectError) and "CERTIFICATE_VERIFY_FAILED" in str(exc)


def _detail(answer: httpx.Response) -> str:
    """The service's reason: its ``detail``, or the first item's error of a batch answer."""
    try:
        body = answer.json()
    except ValueError:
        body = None
    detail: Any = answer.text
    if isinstance(body, dict):
        results = body.get("results")
        first = results[0] if isinstance(results, list) and results else None
        if isinstance(first, dict) and isinstance(first.get("error"), dict):
            error = first["error"]
            detail = error.get("detail") or error.get("message", detail)
        else:
            detail = body.get("detail", detail)
    return " ".join(str(detail).split())[:200]


def _without_index(message: str) -> str:
    head, sep, tail = message.partition("].")
    return tail if sep and head.startswith("detections[") else message
