"""Tenant isolation as the application role sees it: RLS on every tenant table."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from atendeai_ctl.db import migrations
from tests.db_helpers import APP_ROLE, dbname
from tests.servers import PostgresServer

PASSWORD = "rls-test-password"


@dataclass
class Tenants:
    owner_url: str
    app_url: str
    a: str
    b: str


def token_hash(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def seed(conn: psycopg.Connection[Any], slug: str) -> str:
    """One row of every tenant table for a new clinic; returns the clinic id."""
    row = conn.execute(
        "INSERT INTO atendeai.clinics (slug, name) VALUES (%s, %s) RETURNING id::text",
        [slug, slug.upper()],
    ).fetchone()
    assert row is not None
    clinic = row[0]

    def insert(sql: str, *params: object) -> str:
        found = conn.execute(sql + " RETURNING id::text", [clinic, *params]).fetchone()
        assert found is not None
        return str(found[0])

    user = insert(
        "INSERT INTO atendeai.users (clinic_id, email, password_hash) VALUES (%s, %s, 'x')",
        f"owner@{slug}.test",
    )
    session = insert(
        "INSERT INTO atendeai.sessions (clinic_id, user_id, expires_at) "
        "VALUES (%s, %s, now() + interval '1 day')",
        user,
    )
    insert(
        "INSERT INTO atendeai.refresh_tokens (clinic_id, session_id, token_hash, expires_at) "
        "VALUES (%s, %s, %s, now() + interval '1 day')",
        session,
        token_hash(slug),
    )
    insert(
        "INSERT INTO atendeai.api_keys (clinic_id, name, prefix, key_hash) "
        "VALUES (%s, 'ci', 'ak_', %s)",
        token_hash("key-" + slug),
    )
    insert(
        "INSERT INTO atendeai.audit_log (clinic_id, actor, action, outcome) "
        "VALUES (%s, 'cli:test', 'clinic.create', 'success')"
    )
    patient = insert(
        "INSERT INTO atendeai.patients (clinic_id, full_name) VALUES (%s, 'Ana')",
    )
    conversation = insert(
        "INSERT INTO atendeai.conversations (clinic_id, patient_id, channel) "
        "VALUES (%s, %s, 'whatsapp')",
        patient,
    )
    insert(
        "INSERT INTO atendeai.messages (clinic_id, conversation_id, direction, body) "
        "VALUES (%s, %s, 'in', 'hello')",
        conversation,
    )
    insert(
        "INSERT INTO atendeai.appointments (clinic_id, patient_id, starts_at, ends_at) "
        "VALUES (%s, %s, now(), now() + interval '30 minutes')",
        patient,
    )
    return clinic


@pytest.fixture
def tenants(database_url: str, pg: PostgresServer) -> Iterator[Tenants]:
    migrations.upgrade(database_url, app_password=PASSWORD)
    with psycopg.connect(database_url) as conn:
        a, b = seed(conn, "clinic-a"), seed(conn, "clinic-b")
        conn.execute(
            "INSERT INTO atendeai.audit_log (clinic_id, actor, action, outcome) "
            "VALUES (NULL, 'anonymous', 'login', 'failure')"
        )
    yield Tenants(database_url, pg.url(dbname(database_url), APP_ROLE, PASSWORD), a, b)


def tenant_tables(url: str) -> dict[str, str]:
    """Every table the tenant column applies to, found in the catalog (new ones included)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'clinic_id' "
            "WHERE n.nspname = 'atendeai' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
        ).fetchall()
    found = {r[0]: "clinic_id" for r in rows}
    found["clinics"] = "id"
    return found


def as_clinic(conn: psycopg.Connection[Any], clinic: str | None) -> None:
    if clinic is not None:
        conn.execute("SELECT set_config('atendeai.clinic_id', %s, true)", [clinic])


def test_every_tenant_table_has_forced_rls(tenants: Tenants) -> None:
    tables = tenant_tables(tenants.owner_url)
    assert len(tables) == 10
    with psycopg.connect(tenants.owner_url) as conn:
        for table in tables:
            row = conn.execute(
                "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = %s::regclass",
                [f"atendeai.{table}"],
            ).fetchone()
            assert row == (True, True), table


def test_a_clinic_sees_only_its_own_rows_in_every_tenant_table(tenants: Tenants) -> None:
    tables = tenant_tables(tenants.owner_url)
    with psycopg.connect(tenants.owner_url) as owner:
        for table, column in tables.items():
            seeded = owner.execute(
                f"SELECT count(DISTINCT {column}) FROM atendeai.{table} WHERE {column} IN (%s, %s)",
                [tenants.a, tenants.b],
            ).fetchone()
            assert seeded == (2,), f"seed() must give {table} rows of both clinics"
    with psycopg.connect(tenants.app_url) as app:
        for table, column in tables.items():
            as_clinic(app, tenants.a)
            mine, others = app.execute(
                f"SELECT count(*) FILTER (WHERE {column} = %s), "
                f"count(*) FILTER (WHERE {column} IS DISTINCT FROM %s) FROM atendeai.{table}",
                [tenants.a, tenants.a],
            ).fetchone() or (None, None)
            app.rollback()
            assert (mine, others) == (1, 0), table


@pytest.mark.parametrize("setting", [None, ""])
def test_nothing_is_visible_without_a_clinic(tenants: Tenants, setting: str | None) -> None:
    with psycopg.connect(tenants.app_url) as app:
        if setting is not None:
            app.execute("SELECT set_config('atendeai.clinic_id', %s, false)", [setting])
        for table in tenant_tables(tenants.owner_url):
            count = app.execute(f"SELECT count(*) FROM atendeai.{table}").fetchone()
            assert count == (0,), table


def test_the_tenant_setting_does_not_outlive_its_transaction(tenants: Tenants) -> None:
    with psycopg.connect(tenants.app_url) as app:
        as_clinic(app, tenants.a)
        assert app.execute("SELECT count(*) FROM atendeai.clinics").fetchone() == (1,)
        app.commit()
        assert app.execute("SELECT count(*) FROM atendeai.clinics").fetchone() == (0,)


def test_writes_into_another_clinic_are_rejected(tenants: Tenants) -> None:
    with psycopg.connect(tenants.app_url) as app:
        as_clinic(app, tenants.a)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute(
                "INSERT INTO atendeai.patients (clinic_id, full_name) VALUES (%s, 'Eve')",
                [tenants.b],
            )
        app.rollback()
        as_clinic(app, tenants.a)
        updated = app.execute(
            "UPDATE atendeai.patients SET full_name = 'X' WHERE clinic_id = %s", [tenants.b]
        )
        assert updated.rowcount == 0
        deleted = app.execute("DELETE FROM atendeai.users WHERE clinic_id = %s", [tenants.b])
        assert deleted.rowcount == 0


def test_cross_clinic_references_are_rejected_even_for_the_owner(tenants: Tenants) -> None:
    with psycopg.connect(tenants.owner_url) as owner:
        user_b = owner.execute(
            "SELECT id FROM atendeai.users WHERE clinic_id = %s", [tenants.b]
        ).fetchone()
        assert user_b is not None
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            owner.execute(
                "INSERT INTO atendeai.sessions (clinic_id, user_id, expires_at) "
                "VALUES (%s, %s, now())",
                [tenants.a, user_b[0]],
            )


def test_audit_log_is_append_only_for_the_app(tenants: Tenants) -> None:
    with psycopg.connect(tenants.app_url) as app:
        for statement in (
            "UPDATE atendeai.audit_log SET outcome = 'success'",
            "DELETE FROM atendeai.audit_log",
            "TRUNCATE atendeai.audit_log",
        ):
            as_clinic(app, tenants.a)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(statement)
            app.rollback()
        as_clinic(app, tenants.a)
        app.execute(
            "INSERT INTO atendeai.audit_log (clinic_id, actor, action, outcome) "
            "VALUES (NULL, 'anonymous', 'login', 'failure'), (%s, 'user:x', 'login', 'success')",
            [tenants.a],
        )
        app.commit()
        as_clinic(app, tenants.a)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute(
                "INSERT INTO atendeai.audit_log (clinic_id, actor, action, outcome) "
                "VALUES (%s, 'user:x', 'login', 'success')",
                [tenants.b],
            )
    with psycopg.connect(tenants.owner_url) as owner:
        assert owner.execute("SELECT count(*) FROM atendeai.audit_log").fetchone() == (5,)


def test_lookup_functions_work_before_the_clinic_is_known(tenants: Tenants) -> None:
    with psycopg.connect(tenants.app_url) as app:
        found = app.execute(
            "SELECT id::text, status FROM atendeai.clinic_by_slug('Clinic-A')"
        ).fetchall()
        assert found == [(tenants.a, "active")]
        assert app.execute("SELECT * FROM atendeai.clinic_by_slug('nope')").fetchall() == []
        token = app.execute(
            "SELECT atendeai.refresh_token_clinic(%s)::text", [token_hash("clinic-b")]
        ).fetchone()
        assert token == (tenants.b,)
        missing = app.execute(
            "SELECT atendeai.refresh_token_clinic(%s)", [token_hash("none")]
        ).fetchone()
        assert missing == (None,)
        key = app.execute(
            "SELECT atendeai.api_key_clinic(%s)::text", [token_hash("key-clinic-a")]
        ).fetchone()
        assert key == (tenants.a,)


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT * FROM atendeai.alembic_version",
        "SELECT * FROM atendeai.messages_p0",
        "SELECT * FROM atendeai.audit_log_default",
        "CREATE TABLE atendeai.mine (id int)",
        "SELECT atendeai.ensure_audit_log_partitions(1)",
    ],
)
def test_the_app_cannot_reach_around_the_policies(tenants: Tenants, statement: str) -> None:
    with (
        psycopg.connect(tenants.app_url) as app,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        app.execute(statement)
