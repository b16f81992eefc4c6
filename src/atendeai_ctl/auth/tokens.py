"""Access tokens (EdDSA JWTs with a kid) and opaque refresh tokens.

Verification pins the algorithm to EdDSA and the key to the kid's Ed25519 public key, so
`alg: none` and HS/RS key confusion cannot apply; every claim the API relies on is required.
A token whose signature has been checked once is remembered (keyed by its exact text) until
the key ring changes, so the hot path repeats only the expiry check; revocation is checked
separately on every call (sessions.py).
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from typing import Any

import jwt

from atendeai_ctl.auth.keys import KeyRing
from atendeai_ctl.auth.settings import AuthSettings
from atendeai_ctl.errors import AtendeaiError

ALGORITHMS = ["EdDSA"]
REQUIRED_CLAIMS = ["exp", "iat", "sub", "jti", "aud", "iss"]
STRING_CLAIMS = ("sub", "jti", "clinic_id", "sid")
MAX_TOKEN_LENGTH = 4096
CACHE_SIZE = 8192

Claims = dict[str, Any]


class TokenError(AtendeaiError):
    """An access token that must be refused; `reason` is for logs and audit, not for clients."""

    def __init__(self, reason: str) -> None:
        super().__init__("unauthorized", f"invalid access token ({reason})")
        self.reason = reason


def new_refresh_token() -> str:
    return secrets.token_urlsafe(32)


def refresh_token_hash(token: str) -> bytes:
    """Refresh tokens are stored only as SHA-256: high-entropy, so no salt or slow hash needed."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def issue_access_token(
    ring: KeyRing,
    settings: AuthSettings,
    *,
    user_id: str,
    clinic_id: str,
    session_id: str,
    role: str,
    ttl_s: int | None = None,
) -> tuple[str, Claims]:
    now = int(time.time())
    claims: Claims = {
        "iss": settings.issuer,
        "aud": settings.audience,
        "sub": user_id,
        "clinic_id": clinic_id,
        "sid": session_id,
        "role": role,
        "jti": str(uuid.uuid4()),
        "iat": now,
        "exp": now + (settings.access_ttl_s if ttl_s is None else ttl_s),
    }
    kid, key = ring.signing_key()
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid}), claims


class Verifier:
    """Checks access tokens against a key ring, caching verified signatures."""

    def __init__(self, ring: KeyRing, settings: AuthSettings) -> None:
        self.ring = ring
        self.settings = settings
        self._cache: dict[str, Claims] = {}
        self._generation = ring.generation

    def verify(self, token: str) -> Claims:
        """The claims of a valid, unexpired token, or TokenError with the reason."""
        if self._generation != self.ring.generation:
            self._cache.clear()
            self._generation = self.ring.generation
        claims = self._cache.get(token)
        if claims is not None:
            if claims["exp"] <= time.time():
                del self._cache[token]
                raise TokenError("expired")
            return claims
        claims = self._decode(token)
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        self._cache[token] = claims
        return claims

    def _decode(self, token: str) -> Claims:
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise TokenError("malformed")
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, RecursionError):
            # RecursionError: a header of a few thousand nested brackets; json.loads recurses.
            raise TokenError("malformed") from None
        if header.get("alg") not in ALGORITHMS:
            raise TokenError("algorithm_not_allowed")
        kid = header.get("kid")
        key = self.ring.public_key(kid) if isinstance(kid, str) else None
        if key is None:
            raise TokenError("unknown_kid")
        try:
            claims: Claims = jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                options={"require": REQUIRED_CLAIMS, "verify_signature": True},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("expired") from None
        except jwt.InvalidSignatureError:
            raise TokenError("bad_signature") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError(f"missing_claim:{exc.claim}") from None
        except jwt.InvalidAudienceError:
            raise TokenError("wrong_audience") from None
        except jwt.InvalidIssuerError:
            raise TokenError("wrong_issuer") from None
        except jwt.ImmatureSignatureError:
            raise TokenError("not_yet_valid") from None
        except jwt.PyJWTError:
            raise TokenError("malformed") from None
        for name in STRING_CLAIMS:
            if not isinstance(claims.get(name), str):
                raise TokenError(f"missing_claim:{name}")
        if not isinstance(claims["exp"], int | float) or not isinstance(claims["iat"], int | float):
            raise TokenError("malformed")
        return claims
