"""Clinic (tenant) administration: create, list, show, disable, enable.

Each clinic row is visible only when the transaction is scoped to it (RLS on `id`), so writes
set the tenant to the clinic's own id first. Listing every clinic needs the owner role.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg

from atendeai_ctl.auth import audit, identity
from atendeai_ctl.auth._db import IN_TENANT, Conn, enter_clinic, set_tenant
from atendeai_ctl.auth.sessions import Denylist, revoke_all_for_user
from atendeai_ctl.errors import AtendeaiError

SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_COLUMNS = "id, slug, name, status, created_at"


@dataclass(frozen=True)
class Clinic:
    id: UUID
    slug: str
    name: str
    status: str
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "slug": self.slug,
            "name": self.name,
            "status": self.status,
            "created_at": self.created_at.isoformat(),
        }


def create_clinic(conn: Conn, *, slug: str, name: str, actor: str) -> Clinic:
    """The slug is stored normalised (identity.normalize), the form every lookup uses."""
    slug = identity.normalize(slug)
    if not SLUG.match(slug):
        raise AtendeaiError(
            "invalid",
            f"clinic slug {slug!r} is not valid",
            "use 1-63 lowercase letters, digits and '-', starting with a letter or digit",
        )
    if not 1 <= len(name) <= 200 or identity.unsafe(name):
        raise AtendeaiError(
            "invalid", "clinic name must be 1 to 200 characters, without NUL or lone surrogates"
        )
    clinic_id = uuid.uuid4()
    try:
        with conn.transaction():
            set_tenant(conn, clinic_id)
            row = conn.execute(
                f"INSERT INTO atendeai.clinics (id, slug, name) VALUES (%s, %s, %s)"
                f" RETURNING {_COLUMNS}",
                (clinic_id, slug, name),
            ).fetchone()
            audit.record(
                conn,
                action="clinic.create",
                actor=actor,
                outcome="success",
                clinic_id=clinic_id,
                target=f"clinic:{slug}",
                detail={"name": name},
            )
    except psycopg.errors.UniqueViolation:
        raise AtendeaiError("conflict", f"clinic {slug!r} already exists") from None
    assert row is not None
    return Clinic(*row)


def get_clinic(conn: Conn, slug: str) -> Clinic:
    with conn.transaction():
        clinic_id = enter_clinic(conn, slug)
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM atendeai.clinics WHERE id = %s", (clinic_id,)
        ).fetchone()
    assert row is not None
    return Clinic(*row)


def list_clinics(conn: Conn) -> list[Clinic]:
    """Every clinic (as the owner role; the app role sees none outside a tenant scope)."""
    with conn.transaction():
        rows = conn.execute(f"SELECT {_COLUMNS} FROM atendeai.clinics ORDER BY slug").fetchall()
    return [Clinic(*row) for row in rows]


def set_clinic_status(
    conn: Conn, denylist: Denylist | None, *, slug: str, status: str, actor: str
) -> Clinic:
    """Disable (ending every session of its users) or re-enable a clinic."""
    slug = identity.normalize(slug)
    if status not in ("active", "disabled"):
        raise AtendeaiError("invalid", f"status must be 'active' or 'disabled', not {status!r}")
    denied: list[tuple[str, float]] = []
    with conn.transaction():
        clinic_id = enter_clinic(conn, slug)
        row = conn.execute(
            f"UPDATE atendeai.clinics SET status = %s WHERE id = %s RETURNING {_COLUMNS}",
            (status, clinic_id),
        ).fetchone()
        if status == "disabled":
            for (user_id,) in conn.execute(
                f"SELECT id FROM atendeai.users WHERE {IN_TENANT}"
            ).fetchall():
                denied += revoke_all_for_user(conn, user_id, "clinic_disabled")
        audit.record(
            conn,
            action="clinic.disable" if status == "disabled" else "clinic.enable",
            actor=actor,
            outcome="success",
            clinic_id=clinic_id,
            target=f"clinic:{slug}",
            detail={"sessions_revoked": len(denied)},
        )
    if denied and denylist is not None:
        denylist.deny_sessions(denied)
    assert row is not None
    return Clinic(*row)


def rename_clinic(conn: Conn, *, slug: str, name: str, actor: str) -> Clinic:
    """Change the display name; the slug (what logins and URLs use) stays."""
    slug = identity.normalize(slug)
    if not 1 <= len(name) <= 200 or identity.unsafe(name):
        raise AtendeaiError(
            "invalid", "clinic name must be 1 to 200 characters, without NUL or lone surrogates"
        )
    with conn.transaction():
        clinic_id = enter_clinic(conn, slug)
        previous = conn.execute(
            "SELECT name FROM atendeai.clinics WHERE id = %s", (clinic_id,)
        ).fetchone()
        row = conn.execute(
            f"UPDATE atendeai.clinics SET name = %s WHERE id = %s RETURNING {_COLUMNS}",
            (name, clinic_id),
        ).fetchone()
        audit.record(
            conn,
            action="clinic.rename",
            actor=actor,
            outcome="success",
            clinic_id=clinic_id,
            target=f"clinic:{slug}",
            detail={"from": previous[0] if previous else None, "to": name},
        )
    assert row is not None
    return Clinic(*row)
