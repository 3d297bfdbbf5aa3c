"""Start-up checks of the delivery settings, so that each problem is one line before anything
starts: a bad destination or feed URL was a traceback from inside uvicorn's start-up, and TLS
files that cannot be loaded only showed as a link failing again and again.

The checks load what the links and the feed will load (the same functions); the files are read
again on every reconnect, so a certificate renewed in place is picked up without a restart.
"""

from __future__ import annotations

import ssl

from copbridge.config import Settings
from copbridge.delivery.destinations import Destination, DestinationError, configured_destinations
from copbridge.delivery.feed import FeedTls, parse_feed
from copbridge.delivery.tls import destination_context


def _client_tls(destination: Destination) -> None:
    try:
        destination_context(destination)
    except (OSError, ValueError, ssl.SSLError) as exc:
        problem = f"destination {destination.name!r}: its TLS files cannot be used: {exc}"
        raise DestinationError(problem) from None


def _feed(settings: Settings, url: str) -> None:
    try:
        address = parse_feed(url)
    except ValueError as exc:
        raise DestinationError(f"COPBRIDGE_FEED: {exc}") from None
    if address is None:
        return
    tls = FeedTls.from_settings(settings)
    if address.scheme != "tls":
        if tls.any_set:  # meant TLS
            raise DestinationError(
                "COPBRIDGE_FEED_CERT/KEY/CA_FILE are set but the feed is not tls://host:port"
            )
        return
    try:
        tls.context()  # what the feed will load when it starts (no certificate: ValueError)
    except (OSError, ValueError, ssl.SSLError) as exc:
        raise DestinationError(f"COPBRIDGE_FEED: its TLS files cannot be used: {exc}") from None


def check_delivery(settings: Settings, *, run_worker: bool, feed: str) -> list[Destination]:
    """Every destination parsed (the pipeline queues for them even where no worker runs), their
    TLS files loaded where this process delivers, and the feed's URL and files; raises
    ``DestinationError`` naming the first problem."""
    destinations = configured_destinations(settings)
    if run_worker:
        for destination in destinations:
            if destination.scheme == "tls":
                _client_tls(destination)
    _feed(settings, feed)
    return destinations
