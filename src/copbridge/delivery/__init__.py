"""Delivery: moves stored CoT events to TAK destinations and serves them on the built-in feed.

Never imports the API; the API (or ``copbridge worker``) builds a ``DeliveryService`` and runs it.
"""

from copbridge.delivery.destinations import (
    Destination,
    DestinationError,
    configured_destinations,
    destination_names,
    parse_destination,
)
from copbridge.delivery.feed import CotFeed, FeedAddress, parse_feed
from copbridge.delivery.monitor import DestinationState, LinkMonitor, LinkState
from copbridge.delivery.preflight import check_delivery
from copbridge.delivery.service import DeliveryService, worker_id
from copbridge.delivery.transports import LinkError, Transport
from copbridge.delivery.worker import Courier, DeliveryTiming

__all__ = [
    "CotFeed",
    "Courier",
    "DeliveryService",
    "DeliveryTiming",
    "Destination",
    "DestinationError",
    "DestinationState",
    "FeedAddress",
    "LinkError",
    "LinkMonitor",
    "LinkState",
    "Transport",
    "check_delivery",
    "configured_destinations",
    "destination_names",
    "parse_destination",
    "parse_feed",
    "worker_id",
]
