"""Token commands: issue, verify, revoke, list sessions, rotate the signing key."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from atendeai_ctl.admin.durations import TOKEN_TTL_MAX_S
from atendeai_ctl.admin.slugs import normalize_slug
from atendeai_ctl.admin.target import Admin
from atendeai_ctl.auth import audit, clinics, keys, sessions, users
from atendeai_ctl.auth._db import Conn
from atendeai_ctl.auth.sessions import SessionInfo
from atendeai_ctl.auth.tokens import Claims, TokenError, Verifier
from atendeai_ctl.errors import AtendeaiError


@dataclass(frozen=True)
class Issued:
    token: str
    claims: Claims
    clinic: str
    email: str

    @property
    def expires_at(self) -> datetime:
        return datetime.fromtimestamp(self.claims["exp"], UTC)

    def to_dict(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "token_type": "Bearer",
            "jti": self.claims["jti"],
            "session_id": self.claims["sid"],
            "clinic": self.clinic,
            "clinic_id": self.claims["clinic_id"],
            "user": self.email,
            "user_id": self.claims["sub"],
            "role": self.claims["role"],
            "expires_at": self.expires_at.isoformat(),
            "expires_in": int(self.claims["exp"] - self.claims["iat"]),
        }


def issue(admin: Admin, *, clinic: str, email: str, ttl_s: int) -> Issued:
    """An access token in a session of its own; refused for a disabled clinic or user."""
    slug = normalize_slug(clinic)
    ring = admin.ring()
    with admin.transaction() as conn:
        if clinics.get_clinic(conn, slug).status != "active":
            raise AtendeaiError("conflict", f"clinic {slug!r} is disabled", "enable it first")
        user = users.get_user(conn, clinic=slug, email=email.strip())
        token, claims = sessions.issue_token(
            conn, ring, admin.settings, clinic=slug, email=user.email, ttl_s=ttl_s,
            actor=admin.actor,
        )  # fmt: skip
    return Issued(token, claims, slug, user.email)


def verify(admin: Admin, token: str) -> Claims:
    """The claims of a token the service would accept now; else why not.

    Refusals are AtendeaiError("failed") (exit 1): `token verify` answers a yes/no question
    for scripts, it is not itself unauthorized.
    """
    verifier = Verifier(admin.ring(), admin.settings)
    try:
        claims = verifier.verify(token.strip())
    except TokenError as exc:
        raise AtendeaiError("failed", f"token is not valid: {exc.reason}") from None
    if admin.denylist.revoked(claims):
        raise AtendeaiError("failed", "token is not valid: revoked")
    return claims


def _issued_record(conn: Conn, jti: str) -> tuple[Any, float] | None:
    """(clinic id, seconds left) of a token `token issue` made, from its audit row."""
    row = conn.execute(
        "SELECT clinic_id, extract(epoch FROM at)::float8 + (detail->>'ttl_s')::int"
        " FROM atendeai.audit_log WHERE action = 'token.issue' AND detail->>'jti' = %s"
        " ORDER BY at DESC LIMIT 1",
        (jti,),
    ).fetchone()
    return (row[0], float(row[1]) - time.time()) if row else None


def revoke_jti(admin: Admin, jti: str) -> None:
    """Refuse one access token by id, for as long as it could live.

    A token made by `token issue` is found in the audit trail (its clinic and expiry); any
    other is denied for the longest lifetime a token can have. The denylist entry is written
    before the commit, so a Redis failure leaves no audit row claiming a revocation.
    """
    try:
        jti = str(uuid.UUID(jti.strip()))
    except ValueError:
        raise AtendeaiError("invalid", f"{jti[:60]!r} is not a token id (a UUID)") from None
    with admin.transaction(owner=True) as conn:
        found = _issued_record(conn, jti)
        clinic_id, ttl = found if found else (None, float(max_token_lifetime(admin)))
        audit.record(
            conn,
            action="token.revoke",
            actor=admin.actor,
            outcome="success",
            clinic_id=clinic_id,
            target=f"jti:{jti}",
            detail={"issued_by_cli": found is not None},
        )
        sessions.revoke_jti(admin.denylist, jti, ttl_s=max(1, int(ttl)))


def revoke_user(admin: Admin, *, clinic: str, email: str) -> int:
    """End every session of one user; returns how many were still live."""
    with admin.transaction() as conn:
        return sessions.revoke_user_sessions(
            conn, admin.denylist, clinic=normalize_slug(clinic), email=email.strip(),
            actor=admin.actor,
        )  # fmt: skip


def list_user_sessions(
    admin: Admin, *, clinic: str, email: str, include_ended: bool
) -> list[SessionInfo]:
    """A known user's sessions (an unknown user is not_found, not an empty list)."""
    slug = normalize_slug(clinic)
    with admin.transaction() as conn:
        user = users.get_user(conn, clinic=slug, email=email.strip())
        return sessions.list_sessions(
            conn, clinic=slug, email=user.email, active_only=not include_ended
        )


def max_token_lifetime(admin: Admin) -> int:
    """The longest an access token can live: how long a retired public key must stay."""
    settings = admin.settings
    return max(settings.access_ttl_s, settings.max_issue_ttl_s, TOKEN_TTL_MAX_S)


@dataclass(frozen=True)
class Rotation:
    kid: str
    pruned: list[str]
    keys: list[keys.KeyInfo]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "pruned": self.pruned,
            "keys": [
                {"kid": k.kid, "created_at": k.created_at.isoformat(), "signing": k.signing}
                for k in self.keys
            ],
        }


def _after_the_newest_key(directory: Path) -> None:
    """Wait for the next second if the newest key was made in this one.

    Kids start with the creation second and the newest kid signs; two keys of one second
    sort by their random suffix, so the new key might not be the one that signs.
    """
    existing = keys.list_keys(directory)
    if existing and existing[-1].created_at.timestamp() >= int(time.time()):
        time.sleep(1.0 - time.time() % 1.0 + 0.01)


def rotate_keys(admin: Admin) -> Rotation:
    """A new signing key; older keys verify until their last token expired, then go.

    The running service re-reads the directory (mtime) within a second. Keys past every
    token's lifetime are pruned first (harmless at any time); the new key is removed again
    if its audit row cannot be written.
    """
    directory = admin.keys_dir
    pruned = keys.prune_keys(directory, older_than_s=max_token_lifetime(admin))
    _after_the_newest_key(directory)
    kid = keys.rotate_key(directory)
    try:
        with admin.transaction() as conn:
            audit.record(
                conn,
                action="key.rotate",
                actor=admin.actor,
                outcome="success",
                target=f"kid:{kid}",
                detail={"pruned": pruned},
            )
    except BaseException:
        (directory / f"{kid}.pem").unlink(missing_ok=True)
        raise
    return Rotation(kid, pruned, keys.list_keys(directory))
