"""TAK destinations as configured: pytak-style URLs (tcp, tls, udp, file, log) plus their options.

The URL exactly as written in the configuration is the destination's name in the outbox, so the
pipeline (which queues rows) and the worker (which claims them) agree without sharing state.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, cast
from urllib.parse import urlsplit

from copbridge.config import DestinationSettings, Settings

Scheme = Literal["tcp", "tls", "udp", "file", "log"]
WireProtocol = Literal["xml", "protobuf"]
_SCHEMES: tuple[Scheme, ...] = ("tcp", "tls", "udp", "file", "log")
_STREAM_NAMES = ("stdout", "stderr")


class DestinationError(ValueError):
    """A destination URL or option that cannot work; the message names it."""


@dataclass(frozen=True, slots=True)
class Destination:
    """One place CoT events go, with how to reach it and how to speak to it."""

    name: str
    scheme: Scheme
    host: str = ""
    port: int = 0
    path: str = ""
    protocol: WireProtocol = "xml"
    """What is configured; a stream speaks protobuf only once the server accepted it."""
    label: str | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    client_password: str | None = None
    ca_file: Path | None = None
    verify_hostname: bool = True
    expected_hostname: str | None = None
    batch_size: int = 200
    keepalive_s: float = 15.0
    offer_wait_s: float = 5.0
    """How long a protobuf stream waits for the server's TAK protocol offer before it speaks
    XML (a server that never offers reads XML only)."""

    @property
    def is_stream(self) -> bool:
        """TCP or TLS: a connection that can go half-open and needs keepalive pings."""
        return self.scheme in ("tcp", "tls")

    @property
    def is_multicast(self) -> bool:
        if self.scheme != "udp":
            return False
        try:
            return ipaddress.ip_address(self.host).is_multicast
        except ValueError:
            return False


def parse_destination(options: DestinationSettings | str) -> Destination:
    """Check a URL and its options; raise ``DestinationError`` naming what is wrong."""
    opts = DestinationSettings(url=options) if isinstance(options, str) else options
    url = opts.url  # the outbox key, exactly as the pipeline queues it
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in _SCHEMES:
        raise DestinationError(f"destination {url!r}: scheme must be one of {', '.join(_SCHEMES)}")
    scheme = cast(Scheme, parts.scheme.lower())
    common = Destination(
        name=url,
        scheme=scheme,
        protocol=opts.protocol,
        label=opts.name,
        batch_size=opts.batch_size,
        keepalive_s=opts.keepalive_s,
        offer_wait_s=opts.offer_wait_s,
    )
    if scheme in ("file", "log"):
        if opts.protocol != "xml":
            raise DestinationError(f"destination {url!r}: {scheme} destinations write XML only")
        where = (parts.netloc + parts.path) if scheme == "log" else parts.path
        if scheme == "log" and where not in _STREAM_NAMES:
            raise DestinationError(f"destination {url!r}: use log://stdout or log://stderr")
        if scheme == "file" and (parts.netloc or not where):
            raise DestinationError(f"destination {url!r}: use file:///absolute/path")
        return replace(common, path=where)
    try:
        port = parts.port
    except ValueError as exc:
        raise DestinationError(f"destination {url!r}: {exc}") from None
    if not parts.hostname or port is None:
        raise DestinationError(f"destination {url!r}: needs host and port, e.g. tcp://tak:8087")
    if port == 0:
        raise DestinationError(f"destination {url!r}: port must be 1-65535")
    if scheme != "tls" and (opts.client_cert or opts.client_key or opts.ca_file):
        raise DestinationError(f"destination {url!r}: certificates need a tls:// URL")
    if opts.client_key and not opts.client_cert:
        raise DestinationError(f"destination {url!r}: client_key needs client_cert")
    password = opts.client_password.get_secret_value() if opts.client_password else None
    return replace(
        common,
        host=parts.hostname,
        port=port,
        client_cert=opts.client_cert,
        client_key=opts.client_key,
        client_password=password,
        ca_file=opts.ca_file,
        verify_hostname=opts.verify_hostname,
        expected_hostname=opts.expected_hostname,
    )


def configured_destinations(settings: Settings) -> list[Destination]:
    """Every destination of the settings (comma-separated URLs or ``[[destinations]]`` tables)."""
    found = [parse_destination(entry) for entry in settings.destination_settings()]
    names = [d.name for d in found]
    if len(set(names)) != len(names):
        raise DestinationError(
            "the same destination URL is configured twice (the URL is its outbox key: one "
            "server reached with two client certificates needs two spellings of it, e.g. "
            "tls://tak:8089 and tls://TAK:8089)"
        )
    seen: dict[tuple[object, ...], str] = {}
    for d in found:
        # Host names are case-blind and a path-less URL may end in "/": one place with the
        # same options is one entry, or every event would be queued, and delivered, twice. (One
        # server with two client certificates, i.e. two TAK groups, is two destinations.)
        where = (d.scheme, d.host.lower(), d.port, d.path, d.protocol, d.client_cert)
        if where in seen:
            raise DestinationError(
                f"destination {d.name!r} is configured twice (also as {seen[where]!r})"
            )
        seen[where] = d.name
    return found


def destination_names(settings: Settings) -> list[str]:
    """The outbox keys the pipeline queues each event under (``DestinationSettings.url``)."""
    return [d.name for d in configured_destinations(settings)]
