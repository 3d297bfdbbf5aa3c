"""Access and refresh tokens: RS256 JWTs issued for an API key, and their strict verification.

Verification pins the algorithm to RS256 (no ``none``, no HS/RS confusion), picks the public key by
``kid`` and requires issuer, audience, expiry and ``token_use``. Refresh tokens are JWTs too: the
store keeps only their ``jti`` and family, which are useless without the signature.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import jwt

from copbridge.security.signing import SigningKeys
from copbridge.store import RefreshTokenRecord

TokenUse = Literal["access", "refresh"]
_REQUIRED = ["exp", "iat", "iss", "aud", "sub", "jti"]


class TokenRejected(Exception):
    """The token is not one we issued, or is no longer valid; the message says why."""


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    access_jti: str
    refresh: RefreshTokenRecord

    def answer(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "token_type": "bearer",
            "expires_in": self.expires_in,
        }


@dataclass(frozen=True, slots=True)
class TokenClaims:
    jti: str
    subject: str
    scopes: tuple[str, ...]
    use: TokenUse
    expires_s: int
    family: str | None


class TokenAuthority:
    """Issues and checks copbridge's tokens."""

    def __init__(
        self,
        keys: SigningKeys,
        issuer: str,
        audience: str,
        access_ttl_s: int,
        refresh_ttl_s: int,
    ) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.access_ttl_s = access_ttl_s
        self.refresh_ttl_s = refresh_ttl_s

    def issue(self, key_id: str, scopes: tuple[str, ...], family: str | None = None) -> TokenPair:
        """A fresh access token and a refresh token (a new family unless one is given)."""
        now = int(time.time())
        family = family or uuid.uuid4().hex
        access_jti, refresh_jti = uuid.uuid4().hex, uuid.uuid4().hex
        access = self._sign(
            {
                "sub": key_id,
                "scope": " ".join(scopes),
                "jti": access_jti,
                "fam": family,  # a burned family takes its access tokens with it
                "iat": now,
                "nbf": now,
                "exp": now + self.access_ttl_s,
                "token_use": "access",
            },
            "at+jwt",
        )
        refresh_exp = now + self.refresh_ttl_s
        refresh = self._sign(
            {
                "sub": key_id,
                "jti": refresh_jti,
                "fam": family,
                "iat": now,
                "nbf": now,
                "exp": refresh_exp,
                "token_use": "refresh",
            },
            "rt+jwt",
        )
        record = RefreshTokenRecord(
            jti=refresh_jti,
            family=family,
            key_id=key_id,
            issued_us=now * 1_000_000,
            expires_us=refresh_exp * 1_000_000,
            used_us=None,
            revoked_us=None,
        )
        return TokenPair(access, refresh, self.access_ttl_s, access_jti, record)

    def _sign(self, claims: dict[str, Any], typ: str) -> str:
        key = self.keys.current()
        if key.private is None:
            raise TokenRejected("no private key to sign with")
        claims = {"iss": self.issuer, "aud": self.audience, **claims}
        return jwt.encode(
            claims, key.private, algorithm="RS256", headers={"kid": key.kid, "typ": typ}
        )

    def check(self, token: str, use: TokenUse, verify_exp: bool = True) -> TokenClaims:
        """The claims of a token we signed for ``use``, or ``TokenRejected``."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenRejected(f"not a JWT: {exc}") from None
        if header.get("alg") != "RS256":
            # The header is the caller's: a megabyte of it must not come back or be kept.
            raise TokenRejected(f"algorithm {repr(header.get('alg'))[:40]} is not accepted")
        kid = header.get("kid")
        public = self.keys.public_key(kid) if isinstance(kid, str) else None
        if public is None:
            raise TokenRejected("unknown signing key")
        try:
            claims = jwt.decode(
                token,
                public,
                algorithms=["RS256"],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": _REQUIRED, "verify_exp": verify_exp},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejected("token expired") from None
        except jwt.PyJWTError as exc:
            raise TokenRejected(f"invalid token: {exc}") from None
        if claims.get("token_use") != use:
            raise TokenRejected(f"not an {use} token")
        scope = claims.get("scope", "")
        family = claims.get("fam")
        return TokenClaims(
            jti=str(claims["jti"]),
            subject=str(claims["sub"]),
            scopes=tuple(str(scope).split()) if isinstance(scope, str) else (),
            use=use,
            # Past year 9999 (only a leaked key could sign such a token) a revocation's
            # expiry overflowed the stores' 64-bit microseconds: a 500.
            expires_s=min(int(claims["exp"]), _LAST_EXPIRY_S),
            family=str(family) if family is not None else None,
        )


_LAST_EXPIRY_S = 253_402_300_799  # 9999-12-31T23:59:59Z


def family_mark(family: str) -> str:
    """The revocation entry that stands for a whole refresh-token family (its access tokens
    carry the family in ``fam`` and are refused once it is revoked)."""
    return f"family:{family}"
