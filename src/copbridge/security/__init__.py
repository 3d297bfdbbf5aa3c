"""API keys, signed tokens and rate limits: the parts of copbridge's security that know nothing
of HTTP (``copbridge.api.auth`` wires them into the app)."""

from __future__ import annotations

from copbridge.security.keys import SCOPES, KeyRing, KeyText, format_key, mint_key, parse_key
from copbridge.security.ratelimit import RateLimits, Verdict
from copbridge.security.signing import SigningKeys
from copbridge.security.tokens import TokenAuthority, TokenPair, TokenRejected

__all__ = [
    "SCOPES",
    "KeyRing",
    "KeyText",
    "RateLimits",
    "SigningKeys",
    "TokenAuthority",
    "TokenPair",
    "TokenRejected",
    "Verdict",
    "format_key",
    "mint_key",
    "parse_key",
]
