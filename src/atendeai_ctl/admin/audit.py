"""Reading the audit trail: one clinic or all of them, by action and age."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from atendeai_ctl.admin.slugs import normalize_slug
from atendeai_ctl.admin.target import Admin
from atendeai_ctl.auth import audit, clinics
from atendeai_ctl.auth.audit import AuditEntry
from atendeai_ctl.errors import AtendeaiError

MAX_LIMIT = 10_000


@dataclass(frozen=True)
class Entry:
    """An audit row with its clinic's slug (None: no clinic, or the clinic was deleted)."""

    clinic: str | None
    entry: AuditEntry

    def to_dict(self) -> dict[str, Any]:
        return {**self.entry.to_dict(), "clinic": self.clinic}


def list_entries(
    admin: Admin,
    *,
    clinic: str | None,
    action: str | None,
    since_s: int | None,
    limit: int,
) -> list[Entry]:
    """Newest first; `since_s` keeps rows at most that many seconds old."""
    if not 1 <= limit <= MAX_LIMIT:
        raise AtendeaiError("invalid", f"--limit must be from 1 to {MAX_LIMIT}, not {limit}")
    since = datetime.now(UTC) - timedelta(seconds=since_s) if since_s is not None else None
    with admin.transaction(owner=True) as conn:
        slugs = {c.id: c.slug for c in clinics.list_clinics(conn)}
        clinic_id = clinics.get_clinic(conn, normalize_slug(clinic)).id if clinic else None
        rows = audit.search_audit(
            conn, clinic_id=clinic_id, action=action, since=since, limit=limit
        )
    return [Entry(slugs.get(row.clinic_id) if row.clinic_id else None, row) for row in rows]
