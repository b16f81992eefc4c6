"""Tenant scoping shared by every module that talks to PostgreSQL.

RLS policies read `atendeai.clinic_id`; it is set with `is_local = true`, so it lives only as
long as the current transaction and a pooled connection never carries a clinic to its next
borrower. Callers must already be inside `conn.transaction()`.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import psycopg
from psycopg import generators
from psycopg.errors import error_from_result
from psycopg.pq import ExecStatus

from atendeai_ctl.auth import identity
from atendeai_ctl.errors import AtendeaiError

Conn = psycopg.Connection[Any]
Results = list[list[tuple[Any, ...]] | None]
"""Per statement of a message: its rows, or None for a statement that returns none."""


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


_BOOL_OID = 16


async def run_simple(conn: psycopg.AsyncConnection[Any], sql: str) -> Results:
    """One simple-protocol message (several statements allowed, literals only) straight
    through libpq, for the hot async paths (refresh, readiness): psycopg's cursor machinery
    (query conversion, prepared-statement bookkeeping, column descriptions, loaders) cost
    more than the database work. `conn` must be idle and held by the caller alone. Values
    come back as text (bool as bool, NULL as None); the first failing statement raises its
    psycopg error."""
    pgconn = conn.pgconn
    pgconn.send_query(sql.encode())
    results: Results = []
    for res in await conn.wait(generators.execute(pgconn)):
        if res.status == ExecStatus.FATAL_ERROR:
            raise error_from_result(res, encoding=conn.info.encoding)
        if not res.nfields:
            results.append(None)
            continue
        nfields = range(res.nfields)
        bools = [res.ftype(j) == _BOOL_OID for j in nfields]
        rows = []
        for i in range(res.ntuples):
            row: list[Any] = []
            for j in nfields:
                value = res.get_value(i, j)
                if value is None:
                    row.append(None)
                elif bools[j]:
                    row.append(value == b"t")
                else:
                    row.append(value.decode())
            rows.append(tuple(row))
        results.append(rows)
    return results
