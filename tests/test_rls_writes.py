"""RLS on writes, table by table as the application role: a row cannot be moved into another
clinic by UPDATE, and nothing can be written while no clinic is set.

Tables come from the catalog (every table with `clinic_id`, new ones included), and each
write is a real row of the table (copied from what the owner sees), so a refusal can only come
from the policy, never from a NOT NULL column the test forgot.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import psycopg
import pytest

from tests.test_rls import Tenants, as_clinic, tenant_tables
from tests.test_rls import tenants as tenants  # the fixture, used by name

RLS_REFUSAL = "row-level security policy"


def app_may(conn: psycopg.Connection[Any], table: str, privilege: str) -> bool:
    row = conn.execute(
        "SELECT has_table_privilege('atendeai_app', %s, %s)", [f"atendeai.{table}", privilege]
    ).fetchone()
    return bool(row and row[0])


def updatable(tenants: Tenants) -> dict[str, str]:
    with psycopg.connect(tenants.owner_url) as owner:
        found = {
            table: column
            for table, column in tenant_tables(tenants.owner_url).items()
            if column == "clinic_id" and app_may(owner, table, "UPDATE")
        }
    # the tables the platform writes through the app role; audit_log is append-only
    assert {"users", "sessions", "refresh_tokens", "patients", "messages"} <= set(found)
    return found


def test_an_update_cannot_move_a_row_into_another_clinic(tenants: Tenants) -> None:
    tables = updatable(tenants)
    with psycopg.connect(tenants.app_url) as app:
        for table in tables:
            as_clinic(app, tenants.a)
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=RLS_REFUSAL):
                app.execute(f"UPDATE atendeai.{table} SET clinic_id = %s", [tenants.b])
            app.rollback()
            # the same statement keeping the clinic is allowed: the policy, not a grant, refused
            as_clinic(app, tenants.a)
            kept = app.execute(f"UPDATE atendeai.{table} SET clinic_id = %s", [tenants.a])
            assert kept.rowcount == 1, table
            app.rollback()
    with psycopg.connect(tenants.owner_url) as owner:
        for table in tables:
            counts = owner.execute(
                f"SELECT count(*) FILTER (WHERE clinic_id = %s), "
                f"count(*) FILTER (WHERE clinic_id = %s) FROM atendeai.{table}",
                [tenants.a, tenants.b],
            ).fetchone()
            assert counts == (1, 1), table


def _writable_columns(conn: psycopg.Connection[Any], table: str) -> str:
    """The columns an INSERT may name (not identity ALWAYS, not generated)."""
    found = conn.execute(
        "SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
        "AND attidentity <> 'a' AND attgenerated = ''",
        [f"atendeai.{table}"],
    ).fetchone()
    assert found is not None and found[0], table
    return str(found[0])


def _rows_of_a(tenants: Tenants) -> dict[str, tuple[str, str]]:
    """One row of clinic A per tenant table, as JSON with the columns to insert it through
    (the owner bypasses RLS)."""
    rows = {}
    with psycopg.connect(tenants.owner_url) as owner:
        for table, column in tenant_tables(tenants.owner_url).items():
            if not app_may(owner, table, "INSERT"):
                continue
            row = owner.execute(
                f"SELECT row_to_json(t)::text FROM atendeai.{table} t WHERE {column} = %s LIMIT 1",
                [tenants.a],
            ).fetchone()
            assert row is not None, table
            rows[table] = (_writable_columns(owner, table), row[0])
    assert {"users", "patients", "messages", "audit_log"} <= set(rows)
    return rows


@pytest.mark.parametrize("setting", [None, ""])
def test_no_write_is_possible_without_a_clinic(tenants: Tenants, setting: str | None) -> None:
    rows = _rows_of_a(tenants)
    with psycopg.connect(tenants.app_url) as app:
        for table, (columns, row) in rows.items():
            if setting is not None:
                app.execute("SELECT set_config('atendeai.clinic_id', %s, true)", [setting])
            insert = (
                f"INSERT INTO atendeai.{table} ({columns}) SELECT {columns} "
                f"FROM json_populate_record(NULL::atendeai.{table}, %s::json)"
            )
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=RLS_REFUSAL):
                app.execute(insert, [row])
            app.rollback()
            # control: with the row's clinic set, the policy lets the same row through (it may
            # then only collide with its original on a unique key)
            as_clinic(app, tenants.a)
            with contextlib.suppress(psycopg.errors.UniqueViolation):
                app.execute(insert, [row])
            app.rollback()
        for table, column in tenant_tables(tenants.owner_url).items():
            if setting is not None:
                app.execute("SELECT set_config('atendeai.clinic_id', %s, true)", [setting])
            if app_may(app, table, "UPDATE"):
                touched = app.execute(f"UPDATE atendeai.{table} SET {column} = {column}")
                assert touched.rowcount == 0, table
            if app_may(app, table, "DELETE"):
                assert app.execute(f"DELETE FROM atendeai.{table}").rowcount == 0, table
            app.commit()
    with psycopg.connect(tenants.owner_url) as owner:
        for table, column in tenant_tables(tenants.owner_url).items():
            found = owner.execute(
                f"SELECT count(*) FROM atendeai.{table} WHERE {column} = %s", [tenants.a]
            ).fetchone()
            assert found == (1,), f"{table}: {json.dumps(rows.get(table))}"
