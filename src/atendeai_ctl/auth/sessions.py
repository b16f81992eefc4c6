"""Sessions and refresh tokens: login, rotation with reuse detection, logout, revocation.

A session is one login (or one admin-issued token); its refresh tokens form a chain (see
refresh.py for rotation and reuse detection).

Access tokens carry the session id (`sid`). Revoking a session writes `sid` (or a single
`jti`) to a Redis denylist whose entries live as long as the tokens they block, so a revoked
token is refused everywhere at once without a database read on verify.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import redis
from psycopg_pool import ConnectionPool

from atendeai_ctl.auth import audit, identity, passwords
from atendeai_ctl.auth._db import IN_TENANT, Conn, clinic_by_slug, enter_clinic, set_tenant
from atendeai_ctl.auth.keys import KeyRing
from atendeai_ctl.auth.redis_ha import ReplicationUnconfirmed
from atendeai_ctl.auth.settings import AuthSettings
from atendeai_ctl.auth.tokens import (
    Claims,
    issue_access_token,
    new_refresh_token,
    refresh_token_hash,
)
from atendeai_ctl.errors import AtendeaiError

DENY_JTI = "atendeai:deny:jti:"
DENY_SID = "atendeai:deny:sid:"


class AuthFailed(AtendeaiError):
    """Login or refresh refused. Clients see one message; `reason` goes to audit and logs."""

    def __init__(self, reason: str, message: str = "invalid credentials") -> None:
        super().__init__("unauthorized", message)
        self.reason = reason


class Denylist:
    """Revoked sessions and token ids in Redis (sync client: CLI and the app's worker threads).

    `wait_replicas` > 0 (a replica is configured, redis_ha.py): each write ends with
    `WAIT n timeout_ms` on the same connection, and returns only once that many replicas
    hold it; otherwise it raises ReplicationUnconfirmed, since a failover could lose it.
    """

    def __init__(
        self, client: redis.Redis, *, wait_replicas: int = 0, wait_timeout_ms: int = 500
    ) -> None:
        self.client = client
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms

    def _write(self, entries: Iterable[tuple[str, float]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        count = 0
        for key, ttl in entries:
            pipe.set(key, "1", ex=max(1, int(ttl) + 1))
            count += 1
        if not count:
            return
        if self.wait_replicas > 0:
            pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
        replies = pipe.execute()
        if self.wait_replicas > 0 and int(replies[-1]) < self.wait_replicas:
            raise ReplicationUnconfirmed(
                f"{int(replies[-1])} of {self.wait_replicas} replicas confirmed the revocation"
                f" within {self.wait_timeout_ms} ms"
            )

    def deny_sessions(self, sessions: Iterable[tuple[str, float]]) -> None:
        """(session id, seconds its tokens may still live) pairs."""
        self._write((DENY_SID + sid, ttl) for sid, ttl in sessions)

    def deny_jti(self, jti: str, ttl: float) -> None:
        self._write([(DENY_JTI + jti, ttl)])

    def revoked(self, claims: Claims) -> bool:
        return bool(self.client.exists(DENY_JTI + claims["jti"], DENY_SID + claims["sid"]))


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    claims: Claims

    def to_dict(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
        }


def session_ttl(expires_at: datetime) -> float:
    return max(1.0, expires_at.timestamp() - time.time())


def _start_session(
    conn: Conn,
    ring: KeyRing,
    settings: AuthSettings,
    *,
    clinic_id: UUID,
    user_id: UUID,
    role: str,
    ip: str | None,
    user_agent: str | None,
) -> TokenPair:
    refresh = new_refresh_token()
    row = conn.execute(
        "WITH s AS (INSERT INTO atendeai.sessions"
        " (clinic_id, user_id, expires_at, ip, user_agent, last_seen_at)"
        " VALUES (%(c)s, %(u)s, now() + make_interval(secs => %(ttl)s), %(ip)s, %(ua)s, now())"
        " RETURNING id, expires_at)"
        " INSERT INTO atendeai.refresh_tokens (clinic_id, session_id, token_hash, expires_at)"
        " SELECT %(c)s, s.id, %(h)s, s.expires_at FROM s RETURNING session_id",
        {
            "c": clinic_id,
            "u": user_id,
            "ttl": settings.refresh_ttl_s,
            "ip": ip,
            "ua": (user_agent or "")[:400] or None,
            "h": refresh_token_hash(refresh),
        },
    ).fetchone()
    assert row is not None
    access, claims = issue_access_token(
        ring,
        settings,
        user_id=str(user_id),
        clinic_id=str(clinic_id),
        session_id=str(row[0]),
        role=role,
    )
    return TokenPair(access, refresh, settings.access_ttl_s, claims)


@dataclass(frozen=True)
class _Candidate:
    clinic_id: UUID | None
    clinic_status: str | None
    user_id: UUID | None
    user_status: str | None
    role: str | None
    password_hash: str | None


def _find_candidate(conn: Conn, clinic: str, email: str) -> _Candidate:
    with conn.transaction():
        found = clinic_by_slug(conn, clinic)
        if found is None:
            return _Candidate(None, None, None, None, None, None)
        set_tenant(conn, found[0])
        row = conn.execute(
            "SELECT id, status, role, password_hash FROM atendeai.users"
            f" WHERE lower(email) = lower(%s) AND {IN_TENANT}",
            (email,),
        ).fetchone()
    if row is None:
        return _Candidate(found[0], found[1], None, None, None, None)
    return _Candidate(found[0], found[1], row[0], row[1], row[2], row[3])


def login(
    pool: ConnectionPool,
    ring: KeyRing,
    settings: AuthSettings,
    *,
    clinic: str,
    email: str,
    password: str,
    ip: str | None = None,
    user_agent: str | None = None,
) -> TokenPair:
    """Check credentials and open a session, or raise AuthFailed.

    Every failure costs one bcrypt check (a dummy hash when the account is unknown) so the
    answer time does not tell which part was wrong. The connection is released while bcrypt
    runs. Call from a worker thread: bcrypt is slow on purpose and releases the GIL.
    Clinic and email are compared in their normalised form (identity.normalize).
    """
    clinic, email = identity.lookup_key(clinic), identity.lookup_key(email)
    with pool.connection() as conn:
        cand = _find_candidate(conn, clinic, email)
    stored = cand.password_hash or passwords.dummy_hash(settings.bcrypt_cost)
    ok = passwords.check_password(password, stored) and cand.password_hash is not None
    reason = None
    if cand.clinic_id is None:
        reason = "unknown_clinic"
    elif cand.user_id is None:
        reason = "unknown_user"
    elif not ok:
        reason = "wrong_password"
    elif cand.user_status != "active":
        reason = "user_disabled"
    elif cand.clinic_status != "active":
        reason = "clinic_disabled"
    new_hash = None
    if reason is None and passwords.needs_rehash(stored, settings):
        new_hash = passwords.hash_password(password, settings.with_(min_password_length=0))
    actor = f"user:{cand.user_id}" if cand.user_id else "anonymous"
    if reason is not None:
        with pool.connection() as conn, conn.transaction():
            set_tenant(conn, cand.clinic_id)
            audit.record(
                conn,
                action="login",
                actor=actor,
                outcome="failure",
                clinic_id=cand.clinic_id,
                target=f"email:{email}"[:320],
                ip=ip,
                detail={"reason": reason, "clinic": clinic[:64]},
            )
        raise AuthFailed(reason)
    with pool.connection() as conn, conn.transaction():
        set_tenant(conn, cand.clinic_id)
        assert cand.clinic_id and cand.user_id and cand.role
        conn.execute(
            "UPDATE atendeai.users SET last_login_at = now(),"
            " password_hash = coalesce(%s, password_hash) WHERE id = %s",
            (new_hash, cand.user_id),
        )
        pair = _start_session(
            conn,
            ring,
            settings,
            clinic_id=cand.clinic_id,
            user_id=cand.user_id,
            role=cand.role,
            ip=ip,
            user_agent=user_agent,
        )
        audit.record(
            conn,
            action="login",
            actor=actor,
            outcome="success",
            clinic_id=cand.clinic_id,
            target=f"session:{pair.claims['sid']}",
            ip=ip,
            detail={"rehashed": True} if new_hash else {},
        )
    return pair


def _revoke_session_rows(
    conn: Conn, session_ids: list[UUID], reason: str
) -> list[tuple[str, float]]:
    """Mark sessions and their live refresh tokens revoked; (sid, ttl) for the denylist."""
    rows = conn.execute(
        "UPDATE atendeai.sessions SET revoked_at = coalesce(revoked_at, now()),"
        " revoked_reason = coalesce(revoked_reason, %s)"
        " WHERE id = ANY(%s) RETURNING id, expires_at",
        (reason, session_ids),
    ).fetchall()
    conn.execute(
        "UPDATE atendeai.refresh_tokens SET revoked_at = now()"
        " WHERE session_id = ANY(%s) AND revoked_at IS NULL",
        (session_ids,),
    )
    return [(str(sid), session_ttl(expires)) for sid, expires in rows]


def logout(
    conn: Conn,
    denylist: Denylist,
    claims: Claims,
    *,
    everywhere: bool = False,
    ip: str | None = None,
) -> int:
    """Revoke the token's session (or all the user's sessions); returns how many were revoked.

    The denylist is written first: if Redis is down this fails before anything changes, and
    once it returns the access token is refused by every verifier.
    """
    denylist.deny_jti(claims["jti"], claims["exp"] - time.time())
    with conn.transaction():
        set_tenant(conn, claims["clinic_id"])
        if everywhere:
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM atendeai.sessions WHERE user_id = %s AND revoked_at IS NULL",
                    (claims["sub"],),
                ).fetchall()
            ]
        else:
            ids = [UUID(claims["sid"])]
        denied = _revoke_session_rows(conn, ids, "logout")
        denylist.deny_sessions(denied)
        audit.record(
            conn,
            action="logout",
            actor=f"user:{claims['sub']}",
            outcome="success",
            clinic_id=claims["clinic_id"],
            target=f"session:{claims['sid']}",
            ip=ip,
            detail={"scope": "global" if everywhere else "session", "sessions": len(denied)},
        )
    return len(denied)


@dataclass(frozen=True)
class SessionInfo:
    id: UUID
    user_id: UUID
    email: str
    created_at: datetime
    expires_at: datetime
    last_seen_at: datetime | None
    revoked_at: datetime | None
    revoked_reason: str | None
    ip: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "user_id": str(self.user_id),
            "email": self.email,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "last_seen_at": self.last_seen_at.isoformat() if self.last_seen_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "revoked_reason": self.revoked_reason,
            "ip": self.ip,
        }


def list_sessions(
    conn: Conn, *, clinic: str, email: str | None = None, active_only: bool = True
) -> list[SessionInfo]:
    key = None if email is None else identity.lookup_key(email)
    with conn.transaction():
        enter_clinic(conn, clinic)
        rows = conn.execute(
            "SELECT s.id, s.user_id, u.email, s.created_at, s.expires_at, s.last_seen_at,"
            " s.revoked_at, s.revoked_reason, host(s.ip) FROM atendeai.sessions s"
            " JOIN atendeai.users u ON u.id = s.user_id"
            f" WHERE s.{IN_TENANT} AND (%s::text IS NULL OR lower(u.email) = lower(%s))"
            " AND (NOT %s OR (s.revoked_at IS NULL AND s.expires_at > now()))"
            " ORDER BY s.created_at DESC",
            (key, key, active_only),
        ).fetchall()
    return [SessionInfo(*row) for row in rows]


def revoke_user_sessions(
    conn: Conn, denylist: Denylist | None, *, clinic: str, email: str, actor: str
) -> int:
    """Admin: end every session of one user (their access tokens stop working at once)."""
    with conn.transaction():
        clinic_id = enter_clinic(conn, clinic)
        user = conn.execute(
            f"SELECT id FROM atendeai.users WHERE lower(email) = lower(%s) AND {IN_TENANT}",
            (identity.lookup_key(email),),
        ).fetchone()
        if user is None:
            raise AtendeaiError("not_found", f"no user {email!r} in clinic {clinic!r}")
        denied = revoke_all_for_user(conn, user[0], "admin")
        audit.record(
            conn,
            action="session.revoke",
            actor=actor,
            outcome="success",
            clinic_id=clinic_id,
            target=f"user:{user[0]}",
            detail={"sessions": len(denied)},
        )
    if denylist is not None:
        denylist.deny_sessions(denied)
    return len(denied)


def revoke_all_for_user(conn: Conn, user_id: UUID, reason: str) -> list[tuple[str, float]]:
    """Inside a tenant-scoped transaction: revoke the user's live sessions, for the denylist."""
    ids = [
        r[0]
        for r in conn.execute(
            "SELECT id FROM atendeai.sessions WHERE user_id = %s AND revoked_at IS NULL",
            (user_id,),
        ).fetchall()
    ]
    return _revoke_session_rows(conn, ids, reason) if ids else []


def revoke_token(
    conn: Conn, denylist: Denylist, claims: Claims, *, actor: str, whole_session: bool = False
) -> None:
    """Admin: refuse one access token by its jti (and optionally end its session)."""
    denylist.deny_jti(claims["jti"], claims["exp"] - time.time())
    with conn.transaction():
        set_tenant(conn, claims["clinic_id"])
        denied = _revoke_session_rows(conn, [UUID(claims["sid"])], "admin") if whole_session else []
        audit.record(
            conn,
            action="token.revoke",
            actor=actor,
            outcome="success",
            clinic_id=claims["clinic_id"],
            target=f"jti:{claims['jti']}",
            detail={"session": claims["sid"] if whole_session else None},
        )
    if denied:
        denylist.deny_sessions(denied)


def revoke_jti(denylist: Denylist, jti: str, *, ttl_s: int) -> None:
    """Admin: refuse an access token known only by its jti, for `ttl_s` (its max life)."""
    denylist.deny_jti(jti, ttl_s)


def issue_token(
    conn: Conn,
    ring: KeyRing,
    settings: AuthSettings,
    *,
    clinic: str,
    email: str,
    ttl_s: int,
    actor: str,
) -> tuple[str, Claims]:
    """Admin: an access token for a user with a chosen lifetime, in a session of its own."""
    if not 0 < ttl_s <= settings.max_issue_ttl_s:
        raise AtendeaiError(
            "invalid", f"ttl must be between 1 and {settings.max_issue_ttl_s} seconds"
        )
    with conn.transaction():
        clinic_id = enter_clinic(conn, clinic)
        user = conn.execute(
            "SELECT id, role, status FROM atendeai.users"
            f" WHERE lower(email) = lower(%s) AND {IN_TENANT}",
            (identity.lookup_key(email),),
        ).fetchone()
        if user is None:
            raise AtendeaiError("not_found", f"no user {email!r} in clinic {clinic!r}")
        if user[2] != "active":
            raise AtendeaiError("conflict", f"user {email!r} is disabled", "enable it first")
        row = conn.execute(
            "INSERT INTO atendeai.sessions (clinic_id, user_id, expires_at, user_agent)"
            " VALUES (%s, %s, now() + make_interval(secs => %s), 'atendeai token issue')"
            " RETURNING id",
            (clinic_id, user[0], ttl_s),
        ).fetchone()
        assert row is not None
        token, claims = issue_access_token(
            ring,
            settings,
            user_id=str(user[0]),
            clinic_id=str(clinic_id),
            session_id=str(row[0]),
            role=user[1],
            ttl_s=ttl_s,
        )
        audit.record(
            conn,
            action="token.issue",
            actor=actor,
            outcome="success",
            clinic_id=clinic_id,
            target=f"user:{user[0]}",
            detail={"jti": claims["jti"], "ttl_s": ttl_s},
        )
    return token, claims
