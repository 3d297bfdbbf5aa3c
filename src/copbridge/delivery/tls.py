"""TLS contexts for TAK links: client certificates as PEM or PKCS#12, CA file, hostname checks.

TAK servers hand out client certificates as ``.p12`` files; the standard library only loads PEM,
so a PKCS#12 bundle is unpacked into a private temporary directory just long enough to load it.
"""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    pkcs12,
)

from copbridge.delivery.destinations import Destination

_PKCS12_SUFFIXES = (".p12", ".pfx")


def _load_pkcs12(context: ssl.SSLContext, bundle: Path, password: str | None) -> None:
    key, cert, extra = pkcs12.load_key_and_certificates(
        bundle.read_bytes(), password.encode() if password else None
    )
    if key is None or cert is None:
        raise ValueError(f"{bundle} holds no private key and certificate")
    chain = b"".join(c.public_bytes(Encoding.PEM) for c in (cert, *extra))
    key_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    with tempfile.TemporaryDirectory(prefix="copbridge-tls-") as private:  # mode 0700
        cert_path = Path(private) / "cert.pem"
        key_path = Path(private) / "key.pem"
        cert_path.write_bytes(chain)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key_pem)
        context.load_cert_chain(cert_path, key_path)


def load_identity(
    context: ssl.SSLContext, cert: Path, key: Path | None, password: str | None
) -> None:
    """Load our certificate and key (PEM pair, PEM with key inside, or a PKCS#12 bundle)."""
    if cert.suffix.lower() in _PKCS12_SUFFIXES:
        _load_pkcs12(context, cert, password)
    else:
        # A callable, never None: with None, OpenSSL asks for an encrypted key's pass phrase
        # on the terminal, and the event loop (API, feed) stops until someone types one.
        context.load_cert_chain(cert, key, lambda: _given(password, key or cert))


def _given(password: str | None, key: Path) -> str:
    if password is None:
        raise ValueError(f"{key} is encrypted: set its password (client_password, feed_password)")
    return password


def client_context(
    *,
    ca_file: Path | None,
    client_cert: Path | None,
    client_key: Path | None,
    client_password: str | None,
    verify_hostname: bool,
) -> ssl.SSLContext:
    """A context that always verifies the server's chain; the hostname check can be turned off."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.check_hostname = verify_hostname
    if client_cert is not None:
        load_identity(context, client_cert, client_key, client_password)
    return context


def destination_context(destination: Destination) -> ssl.SSLContext:
    """The client context of a ``tls://`` destination, loaded from its files (each connect)."""
    d = destination
    return client_context(
        ca_file=d.ca_file,
        client_cert=d.client_cert,
        client_key=d.client_key,
        client_password=d.client_password,
        verify_hostname=d.verify_hostname,
    )


def server_context(
    *, cert: Path, key: Path | None, password: str | None, client_ca: Path | None
) -> ssl.SSLContext:
    """The feed's context: with ``client_ca`` every client must present a certificate it signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    load_identity(context, cert, key, password)
    if client_ca is not None:
        context.load_verify_locations(cafile=str(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context
