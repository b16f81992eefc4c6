"""Access tokens (EdDSA JWTs with a kid) and opaque refresh tokens.

Tokens are compact JWS, signed with `cryptography` and checked with libsodium (PyNaCl)
directly: PyJWT's generic machinery cost more than the rest of a cached verify, and
libsodium's Ed25519 verification takes about half of OpenSSL's time here (54 against 104 µs
per check), which is most of what a token not seen before costs. Verification pins the algorithm to
EdDSA and the key to the kid's Ed25519 public key, so `alg: none` and HS/RS key confusion
cannot apply; every claim the API relies on is required. The header segment of the tokens
we sign is the same bytes for every token of a kid, so it is recognised by exact match; any
other header is parsed and must still name EdDSA and a known kid (then remembered until the
key ring changes).

A token whose signature has been checked once is remembered (keyed by its exact text) until
the key ring changes, so the hot path repeats only the expiry check; revocation is checked
separately on every call (sessions.py).
"""

from __future__ import annotations

import binascii
import hashlib
import json
import math
import secrets
import time
import uuid
from typing import Any

from nacl.bindings import crypto_sign_BYTES, crypto_sign_open
from nacl.exceptions import BadSignatureError

from atendeai_ctl.auth.keys import KeyRing
from atendeai_ctl.auth.settings import AuthSettings
from atendeai_ctl.errors import AtendeaiError

ALGORITHMS = ["EdDSA"]
REQUIRED_CLAIMS = ["exp", "iat", "sub", "jti", "aud", "iss"]
STRING_CLAIMS = ("sub", "jti", "clinic_id", "sid")
MAX_TOKEN_LENGTH = 4096
CACHE_SIZE = 8192
HEADER_CACHE_SIZE = 64

Claims = dict[str, Any]

_TO_STD = str.maketrans("-_", "+/")
_TO_URL = bytes.maketrans(b"+/", b"-_")


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


def _b64encode(data: bytes) -> bytes:
    return binascii.b2a_base64(data, newline=False).translate(_TO_URL).rstrip(b"=")


def _b64decode(segment: str) -> bytes:
    """Strict unpadded base64url (RFC 7515): anything else is an error, never skipped, so a
    token has one spelling."""
    if "=" in segment:
        raise ValueError("padded base64url")
    return binascii.a2b_base64(
        segment.translate(_TO_STD) + "=" * (-len(segment) % 4), strict_mode=True
    )


def _header_segment(kid: str) -> str:
    """The header every token of `kid` carries (the bytes PyJWT wrote for the same header)."""
    header = {"alg": "EdDSA", "kid": kid, "typ": "JWT"}
    return _b64encode(json.dumps(header, separators=(",", ":"), sort_keys=True).encode()).decode()


_segments: dict[str, str] = {}


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
    header = _segments.get(kid)
    if header is None:
        header = _segments[kid] = _header_segment(kid)
    payload = json.dumps(claims, separators=(",", ":")).encode()
    signing_input = b"%s.%s" % (header.encode(), _b64encode(payload))
    token = b"%s.%s" % (signing_input, _b64encode(key.sign(signing_input)))
    return token.decode(), claims


def _number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


class Verifier:
    """Checks access tokens against a key ring, caching verified signatures."""

    def __init__(self, ring: KeyRing, settings: AuthSettings) -> None:
        self.ring = ring
        self.settings = settings
        self._cache: dict[str, tuple[Claims, bytes]] = {}
        self._headers: dict[str, bytes] = {}  # header segment -> raw public key
        self._generation = -1
        self._sync()

    def _sync(self) -> None:
        """Forget what the previous key ring vouched for; pin our own tokens' header bytes."""
        self._generation = self.ring.generation
        self._cache.clear()
        self._headers = {
            _header_segment(kid): key.public_bytes_raw() for kid, key in self.ring.public.items()
        }

    def verify(self, token: str) -> Claims:
        """The claims of a valid, unexpired token, or TokenError with the reason."""
        return self.verify_with_payload(token)[0]

    def verify_with_payload(self, token: str) -> tuple[Claims, bytes]:
        """`verify`, plus the claims as the JSON the token carries (signed, so it can be sent
        as they are: /auth/verify answers with these bytes instead of encoding them again)."""
        if self._generation != self.ring.generation:
            self._sync()
        entry = self._cache.get(token)
        if entry is not None:
            if entry[0]["exp"] <= time.time():
                del self._cache[token]
                raise TokenError("expired")
            return entry
        entry = self._decode(token)
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        self._cache[token] = entry
        return entry

    def _key(self, segment: str) -> bytes:
        """The public key a header segment names: pinned bytes, or a parse held to EdDSA."""
        key = self._headers.get(segment)
        if key is not None:
            return key
        try:
            header = json.loads(_b64decode(segment))
        except (ValueError, RecursionError):
            # RecursionError: a header of a few thousand nested brackets; json.loads recurses.
            raise TokenError("malformed") from None
        if not isinstance(header, dict):
            raise TokenError("malformed")
        if header.get("alg") not in ALGORITHMS:
            raise TokenError("algorithm_not_allowed")
        if "crit" in header or "b64" in header:
            raise TokenError("malformed")  # extensions we do not implement (RFC 7515 4.1.11)
        kid = header.get("kid")
        found = self.ring.public_key(kid) if isinstance(kid, str) else None
        if found is None:
            raise TokenError("unknown_kid")
        if self._generation != self.ring.generation:
            self._sync()  # the lookup reloaded the ring (a kid seen for the first time)
        raw = found.public_bytes_raw()
        if len(self._headers) < HEADER_CACHE_SIZE:
            self._headers[segment] = raw
        return raw

    def _decode(self, token: str) -> tuple[Claims, bytes]:
        if not token or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 2:
            raise TokenError("malformed")
        header, payload, signature = token.split(".")
        key = self._key(header)
        try:
            body = _b64decode(payload)
            raw_signature = _b64decode(signature)
        except ValueError:
            raise TokenError("malformed") from None
        # crypto_sign_open takes the signature and the message as one buffer: a signature of
        # any other length would shift where the message starts.
        if len(raw_signature) != crypto_sign_BYTES:
            raise TokenError("bad_signature")
        signed = token[: len(header) + len(payload) + 1].encode("ascii")
        try:
            crypto_sign_open(raw_signature + signed, key)
        except BadSignatureError:
            raise TokenError("bad_signature") from None
        try:
            claims = json.loads(body)
        except (ValueError, RecursionError):
            raise TokenError("malformed") from None
        if not isinstance(claims, dict):
            raise TokenError("malformed")
        return self._checked(claims), body

    def _checked(self, claims: Claims) -> Claims:
        """The registered claims, checked in the order (and with the reasons) PyJWT used."""
        for name in REQUIRED_CLAIMS:
            if claims.get(name) is None:
                raise TokenError(f"missing_claim:{name}")
        exp, iat, nbf = claims["exp"], claims["iat"], claims.get("nbf")
        if not _number(exp) or not _number(iat) or not (nbf is None or _number(nbf)):
            raise TokenError("malformed")
        now = time.time()
        if iat > now or (nbf is not None and nbf > now):
            raise TokenError("not_yet_valid")
        if exp <= now:
            raise TokenError("expired")
        iss = claims["iss"]
        if not isinstance(iss, str) or iss != self.settings.issuer:
            raise TokenError("wrong_issuer")
        aud = claims["aud"]
        audiences = [aud] if isinstance(aud, str) else aud
        if (
            not isinstance(audiences, list)
            or not all(isinstance(a, str) for a in audiences)
            or self.settings.audience not in audiences
        ):
            raise TokenError("wrong_audience")
        for name in STRING_CLAIMS:
            if not isinstance(claims.get(name), str):
                raise TokenError(f"missing_claim:{name}")
        return claims
