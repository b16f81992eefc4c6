"""Password policy and bcrypt hashing.

bcrypt silently ignores bytes after the 72nd, so longer passwords are refused rather than
truncated: two different passwords must never hash the same. The cost may be raised at any
time; `needs_rehash` lets a successful login upgrade the stored hash.
"""

from __future__ import annotations

import functools

import bcrypt

from atendeai_ctl.auth import identity
from atendeai_ctl.auth.settings import MIN_BCRYPT_COST, AuthSettings
from atendeai_ctl.errors import AtendeaiError

MAX_PASSWORD_BYTES = 72


def validate_password(password: str, settings: AuthSettings) -> bytes:
    """The password as bytes, or AtendeaiError('invalid') saying which rule it breaks.

    NUL and unpaired surrogates are refused: the HTTP edge refuses them at login (a surrogate
    cannot be encoded, and C implementations of bcrypt stop at NUL), so such a password could
    never be used.
    """
    if identity.unsafe(password):
        raise AtendeaiError("invalid", "password must not contain NUL or unpaired surrogates")
    raw = password.encode("utf-8")
    if len(raw) > MAX_PASSWORD_BYTES:
        raise AtendeaiError(
            "invalid",
            f"password is {len(raw)} bytes long; the limit is {MAX_PASSWORD_BYTES} bytes (UTF-8)",
            "bcrypt only uses the first 72 bytes, so longer passwords are refused, not cut",
        )
    if len(password) < settings.min_password_length:
        raise AtendeaiError(
            "invalid",
            f"password must be at least {settings.min_password_length} characters long",
        )
    return raw


def hash_password(password: str, settings: AuthSettings) -> str:
    """Validate, then hash with the configured cost (slow on purpose: run it off the loop)."""
    raw = validate_password(password, settings)
    return bcrypt.hashpw(raw, bcrypt.gensalt(settings.bcrypt_cost)).decode("ascii")


def check_password(password: str, password_hash: str) -> bool:
    """Constant-work comparison; False for over-long input instead of an exception."""
    raw = password.encode("utf-8")
    if len(raw) > MAX_PASSWORD_BYTES:
        return False
    try:
        return bcrypt.checkpw(raw, password_hash.encode("ascii"))
    except ValueError:
        return False


def hash_cost(password_hash: str) -> int:
    """The cost recorded in a `$2b$12$...` hash (0 if it is not a bcrypt hash)."""
    parts = password_hash.split("$")
    return int(parts[2]) if len(parts) > 3 and parts[2].isdigit() else 0


def needs_rehash(password_hash: str, settings: AuthSettings) -> bool:
    return hash_cost(password_hash) < settings.bcrypt_cost


@functools.lru_cache(maxsize=4)
def dummy_hash(cost: int) -> str:
    """A hash to check against when the account is unknown, so timing reveals nothing."""
    return bcrypt.hashpw(
        b"no-such-account-dummy", bcrypt.gensalt(max(cost, MIN_BCRYPT_COST))
    ).decode("ascii")
