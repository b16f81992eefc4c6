"""The append-only audit trail: every auth event and admin action, one row each.

`record` is called inside the caller's transaction, so the row commits or rolls back together
with the change it describes. Never put secrets in `detail`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from psycopg.types.json import Jsonb

from atendeai_ctl.auth._db import Conn, enter_clinic

Outcome = Literal["success", "failure", "denied"]


def record(
    conn: Conn,
    *,
    action: str,
    actor: str,
    outcome: Outcome,
    clinic_id: UUID | str | None = None,
    target: str | None = None,
    ip: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        "INSERT INTO atendeai.audit_log (clinic_id, actor, action, target, outcome, ip, detail)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (clinic_id, actor, action, target, outcome, ip, Jsonb(detail or {})),
    )


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    clinic_id: UUID | None
    actor: str
    action: str
    target: str | None
    outcome: str
    ip: str | None
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "clinic_id": None if self.clinic_id is None else str(self.clinic_id),
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "outcome": self.outcome,
            "ip": self.ip,
            "detail": self.detail,
        }


def list_audit(
    conn: Conn,
    *,
    clinic: str,
    action: str | None = None,
    actor: str | None = None,
    limit: int = 100,
) -> list[AuditEntry]:
    """A clinic's newest rows first (RLS shows the app role only that clinic's rows)."""
    with conn.transaction():
        clinic_id = enter_clinic(conn, clinic)
        rows = conn.execute(
            "SELECT id, at, clinic_id, actor, action, target, outcome, host(ip), detail"
            " FROM atendeai.audit_log WHERE clinic_id = %s"
            " AND (%s::text IS NULL OR action = %s) AND (%s::text IS NULL OR actor = %s)"
            " ORDER BY id DESC LIMIT %s",
            (clinic_id, action, action, actor, actor, limit),
        ).fetchall()
    return [AuditEntry(*row) for row in rows]


def search_audit(
    conn: Conn,
    *,
    clinic_id: UUID | None = None,
    action: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
) -> list[AuditEntry]:
    """Newest first, across every clinic when `clinic_id` is None (needs the owner role).

    Rows without a clinic (logins for unknown slugs, key rotations) appear only then.
    """
    with conn.transaction():
        rows = conn.execute(
            "SELECT id, at, clinic_id, actor, action, target, outcome, host(ip), detail"
            " FROM atendeai.audit_log"
            " WHERE (%(c)s::uuid IS NULL OR clinic_id = %(c)s)"
            " AND (%(a)s::text IS NULL OR action = %(a)s)"
            " AND (%(s)s::timestamptz IS NULL OR at >= %(s)s)"
            " ORDER BY at DESC, id DESC LIMIT %(n)s",
            {"c": clinic_id, "a": action, "s": since, "n": limit},
        ).fetchall()
    return [AuditEntry(*row) for row in rows]
