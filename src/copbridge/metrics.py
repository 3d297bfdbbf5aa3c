"""Prometheus metrics of the whole process, in one registry (the client's default, with process
and platform collectors) so every room of the flow adds its figures to the same ``/metrics``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

HTTP_REQUESTS = Counter(
    "copbridge_http_requests_total",
    "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "copbridge_http_request_duration_seconds",
    "Time from request start to the last byte of the answer, by route template and method.",
    ["route", "method"],
    buckets=_LATENCY_BUCKETS,
)
DETECTIONS_ACCEPTED = Counter(
    "copbridge_detections_accepted_total", "Detections durably stored and queued (202)."
)
DETECTIONS_DUPLICATE = Counter(
    "copbridge_detections_duplicate_total", "Retries of an already stored detection (same body)."
)
DETECTIONS_STALE_ON_ARRIVAL = Counter(
    "copbridge_detections_stale_on_arrival_total",
    "Detections stored (202) whose CoT event was already stale: it expires unsent, since TAK "
    "clients drop stale events (a detector's clock behind, or old data sent again).",
)
DETECTIONS_REJECTED = Counter(
    "copbridge_detections_rejected_total", "Detections refused, by reason.", ["reason"]
)
GEOLOCATION_SECONDS = Histogram(
    "copbridge_geolocation_seconds", "Time to locate one detection.", buckets=_LATENCY_BUCKETS
)
COMMIT_SECONDS = Histogram(
    "copbridge_store_commit_seconds",
    "Duration of one group-commit transaction.",
    buckets=_LATENCY_BUCKETS,
)
COMMIT_BATCH = Histogram(
    "copbridge_store_commit_batch_size",
    "Jobs written by one group commit.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
STORE_ERRORS = Counter(
    "copbridge_store_errors_total",
    "Group commits that failed, or in which the store refused a write (disk full, read-only).",
)
DELIVERY_SENT = Counter(
    "copbridge_delivery_sent_total", "Events written to a destination.", ["destination"]
)
DELIVERY_EXPIRED = Counter(
    "copbridge_delivery_expired_total", "Events dropped at their stale time.", ["destination"]
)
DELIVERY_ERRORS = Counter(
    "copbridge_delivery_errors_total", "Failed connections or writes.", ["destination"]
)
DESTINATION_UP = Gauge(
    "copbridge_destination_connected", "1 while a destination is connected.", ["destination"]
)
DESTINATION_PENDING = Gauge(
    "copbridge_destination_pending", "Events waiting for a destination.", ["destination"]
)
DESTINATION_OLDEST = Gauge(
    "copbridge_destination_oldest_pending_seconds",
    "Age of the oldest event waiting for a destination.",
    ["destination"],
)
RATE_LIMIT_SHARED_UP = Gauge(
    "copbridge_rate_limit_shared_up",
    "1 while rate limits are counted in the shared storage (Redis); 0 while this replica counts "
    "them alone because Redis failed or did not answer in time, or when no Redis is configured.",
)
RATE_LIMIT_LOCAL_FALLBACKS = Counter(
    "copbridge_rate_limit_fallbacks_total",
    "Times the shared rate-limit storage failed and this replica began counting alone.",
)
FEED_CLIENTS = Gauge("copbridge_feed_clients", "TAK clients connected to the built-in feed.")


def observe_commit(size: int, seconds: float, ok: bool) -> None:
    """Group-commit observer handed to the store (the store itself knows nothing of Prometheus)."""
    COMMIT_BATCH.observe(size)
    COMMIT_SECONDS.observe(seconds)
    if not ok:
        STORE_ERRORS.inc()


PREPARE_HELPER_UP = Gauge(
    "copbridge_prepare_helper_up",
    "1 while the helper process that prepares detections runs (0: serve prepares them itself).",
    ["helper"],
)
PREPARED_HERE = Counter(
    "copbridge_prepared_in_serve_total",
    "Detection bodies meant for a helper process that serve prepared itself, by reason "
    "(image: the body holds one; not taken: the helper declined it; helper down).",
    ["helper", "reason"],
)
PREPARE_HELPER_RESTARTS = Counter(
    "copbridge_prepare_helper_restarts_total",
    "Helper processes started again after one stopped, hung or failed to start.",
    ["helper"],
)
