"""Tenant scoping shared by every module that talks to PostgreSQL.

RLS policies read `atendeai.clinic_id`; it is set with `is_local = true`, so it lives only as
long as the current transaction and a pooled connection never carries a clinic to its next
borrower. Callers must already be inside `conn.transaction()`.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import psycopg

from atendeai_ctl.auth import identity
from atendeai_ctl.errors import AtendeaiError

Conn = psycopg.Connection[Any]


IN_TENANT = "clinic_id = nullif(current_setting('atendeai.clinic_id', true), '')::uuid"
"""The tenant filter spelled out in SQL too: RLS does not bind the schema owner (the admin
CLI's connection), so queries must not rely on it alone to stay inside one clinic."""


def set_tenant(conn: Conn, clinic_id: UUID | str | None) -> None:
    conn.execute(
        "SELECT set_config('atendeai.clinic_id', %s, true)",
        ("" if clinic_id is None else str(clinic_id),),
    )


def clinic_by_slug(conn: Conn, slug: str) -> tuple[UUID, str] | None:
    """(id, status) through the SECURITY DEFINER lookup: works before the tenant is known.

    The slug is normalised (identity.normalize) here, the one lookup every caller goes through.
    A slug holding NUL or an unpaired surrogate names no clinic (PostgreSQL could not take it).
    """
    row = conn.execute(
        "SELECT id, status FROM atendeai.clinic_by_slug(%s)", (identity.lookup_key(slug),)
    ).fetchone()
    return (row[0], row[1]) if row else None


def enter_clinic(conn: Conn, slug: str) -> UUID:
    """Resolve a slug and scope the current transaction to that clinic."""
    found = clinic_by_slug(conn, slug)
    if found is None:
        raise AtendeaiError(
            "not_found", f"no clinic with slug {slug!r}", "see `atendeai clinic list`"
        )
    set_tenant(conn, found[0])
    return found[0]
