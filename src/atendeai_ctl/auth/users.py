"""User administration inside one clinic: create, list, show, disable/enable, password, role.

Disabling a user revokes their sessions in the same transaction and denylists them in Redis,
so their access tokens stop verifying immediately rather than at expiry.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg

from atendeai_ctl.auth import audit, identity, passwords
from atendeai_ctl.auth._db import IN_TENANT, Conn, enter_clinic
from atendeai_ctl.auth.sessions import Denylist, revoke_all_for_user
from atendeai_ctl.auth.settings import AuthSettings
from atendeai_ctl.errors import AtendeaiError

EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
ROLES = ("owner", "admin", "staff")
_COLUMNS = "id, clinic_id, email, name, role, status, last_login_at, created_at"


@dataclass(frozen=True)
class User:
    id: UUID
    clinic_id: UUID
    email: str
    name: str | None
    role: str
    status: str
    last_login_at: datetime | None
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "clinic_id": str(self.clinic_id),
            "email": self.email,
            "name": self.name,
            "role": self.role,
            "status": self.status,
            "last_login_at": self.last_login_at.isoformat() if self.last_login_at else None,
            "created_at": self.created_at.isoformat(),
        }


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise AtendeaiError("invalid", f"role must be one of {', '.join(ROLES)}, not {role!r}")


def create_user(
    conn: Conn,
    settings: AuthSettings,
    *,
    clinic: str,
    email: str,
    password: str,
    actor: str,
    role: str = "staff",
    name: str | None = None,
) -> User:
    """Hash first (slow, no transaction open), then insert with its audit row.

    The email is stored normalised (identity.normalize), the form logins look up and the
    limiter keys on; the unique index on (clinic_id, lower(email)) then agrees with both.
    """
    email = identity.normalize(email)
    if len(email) > 254 or not EMAIL.match(email) or identity.unsafe(email):
        raise AtendeaiError("invalid", f"{email!r} is not an email address")
    _check_role(role)
    if name is not None and (len(name) > 200 or identity.unsafe(name)):
        raise AtendeaiError(
            "invalid", "name must be at most 200 characters, without NUL or lone surrogates"
        )
    password_hash = passwords.hash_password(password, settings)
    try:
        with conn.transaction():
            clinic_id = enter_clinic(conn, clinic)
            row = conn.execute(
                "INSERT INTO atendeai.users (clinic_id, email, name, password_hash, role)"
                f" VALUES (%s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
                (clinic_id, email, name, password_hash, role),
            ).fetchone()
            assert row is not None
            audit.record(
                conn,
                action="user.create",
                actor=actor,
                outcome="success",
                clinic_id=clinic_id,
                target=f"user:{row[0]}",
                detail={"email": email, "role": role},
            )
    except psycopg.errors.UniqueViolation:
        raise AtendeaiError("conflict", f"user {email!r} already exists in {clinic!r}") from None
    return User(*row)


def list_users(conn: Conn, *, clinic: str) -> list[User]:
    with conn.transaction():
        enter_clinic(conn, clinic)
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM atendeai.users WHERE {IN_TENANT} ORDER BY email"
        ).fetchall()
    return [User(*row) for row in rows]


def get_user(conn: Conn, *, clinic: str, email: str) -> User:
    with conn.transaction():
        enter_clinic(conn, clinic)
        return _get(conn, clinic, email)


def _get(conn: Conn, clinic: str, email: str) -> User:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM atendeai.users WHERE lower(email) = lower(%s) AND {IN_TENANT}",
        (identity.lookup_key(email),),
    ).fetchone()
    if row is None:
        raise AtendeaiError("not_found", f"no user {email!r} in clinic {clinic!r}")
    return User(*row)


def _update(
    conn: Conn,
    *,
    clinic: str,
    email: str,
    actor: str,
    action: str,
    assignments: str,
    params: tuple[Any, ...],
    detail: dict[str, Any],
    revoke: bool | Callable[[User], bool] = False,
    count_revoked: bool = True,
    denylist: Denylist | None = None,
) -> User:
    """`revoke`: end the user's sessions (a callable decides from the user as it was), and
    denylist them in Redis once the transaction is done; `count_revoked`: put how many in the
    audit row's detail."""
    with conn.transaction():
        clinic_id = enter_clinic(conn, clinic)
        user = _get(conn, clinic, email)
        row = conn.execute(
            f"UPDATE atendeai.users SET {assignments} WHERE id = %s RETURNING {_COLUMNS}",
            (*params, user.id),
        ).fetchone()
        ending = revoke(user) if callable(revoke) else revoke
        denied = revoke_all_for_user(conn, user.id, action) if ending else []
        audit.record(
            conn,
            action=action,
            actor=actor,
            outcome="success",
            clinic_id=clinic_id,
            target=f"user:{user.id}",
            detail={**detail, "sessions_revoked": len(denied)}
            if ending and count_revoked
            else detail,
        )
    assert row is not None
    if denied and denylist is not None:
        denylist.deny_sessions(denied)
    return User(*row)


def set_user_status(
    conn: Conn, denylist: Denylist | None, *, clinic: str, email: str, status: str, actor: str
) -> User:
    if status not in ("active", "disabled"):
        raise AtendeaiError("invalid", f"status must be 'active' or 'disabled', not {status!r}")
    disabling = status == "disabled"
    return _update(
        conn,
        clinic=clinic,
        email=email,
        actor=actor,
        action="user.disable" if disabling else "user.enable",
        assignments="status = %s",
        params=(status,),
        detail={},
        revoke=disabling,
        denylist=denylist,
    )


def set_password(
    conn: Conn,
    settings: AuthSettings,
    denylist: Denylist | None,
    *,
    clinic: str,
    email: str,
    password: str,
    actor: str,
    revoke_sessions: bool = True,
) -> User:
    """New hash; by default every existing session ends (a reset usually means compromise)."""
    password_hash = passwords.hash_password(password, settings)
    return _update(
        conn,
        clinic=clinic,
        email=email,
        actor=actor,
        action="user.set_password",
        assignments="password_hash = %s",
        params=(password_hash,),
        detail={},
        revoke=revoke_sessions,
        denylist=denylist,
    )


def set_role(
    conn: Conn,
    *,
    clinic: str,
    email: str,
    role: str,
    actor: str,
    denylist: Denylist | None = None,
) -> User:
    """A changed role ends every session of the user, at once.

    Access tokens carry the role, so a demoted user's token would keep the old role until it
    expires (15 minutes). Two ways out: revoke the sessions (what set_password and disabling
    already do), or version the claims and compare the version on every verify. Revocation
    was chosen: it reuses the denylist /auth/verify already checks in its one Redis call, so
    the hot path costs nothing more, while a claims version would need a per-user lookup on
    every verify; role changes are rare and a fresh login is a small price. Setting the role
    the user already has revokes nothing. Without a `denylist` the sessions end in the
    database only (refresh stops at once, live access tokens at expiry): the admin CLI passes
    one. The audit detail stays {"role": ...}; the sessions carry revoked_reason
    'user.set_role'.
    """
    _check_role(role)
    return _update(
        conn,
        clinic=clinic,
        email=email,
        actor=actor,
        action="user.set_role",
        assignments="role = %s",
        params=(role,),
        detail={"role": role},
        revoke=lambda before: before.role != role,
        count_revoked=False,
        denylist=denylist,
    )
