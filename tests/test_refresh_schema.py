"""Migration 0005 (the refresh hot path): cheaper functions and one foreign key fewer, with
the same rules still enforced by the database, and a downgrade that brings 0004's back."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from atendeai_ctl.db import migrations
from tests.test_rls import Tenants, as_clinic, token_hash
from tests.test_rls import tenants as tenants  # the fixture, used by name

CLINIC_FK = "fk_refresh_tokens_clinic_id_clinics"


def function(conn: psycopg.Connection[Any], name: str) -> tuple[str, bool, list[str] | None]:
    """(language, SECURITY DEFINER, SET clauses) of atendeai.<name>."""
    row = conn.execute(
        "SELECT l.lanname, p.prosecdef, p.proconfig FROM pg_proc p"
        " JOIN pg_language l ON l.oid = p.prolang"
        " JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = 'atendeai' AND p.proname = %s",
        [name],
    ).fetchone()
    assert row is not None, name
    return row[0], row[1], row[2]


def foreign_keys(conn: psycopg.Connection[Any]) -> set[str]:
    rows = conn.execute(
        "SELECT conname FROM pg_constraint"
        " WHERE conrelid = 'atendeai.refresh_tokens'::regclass AND contype = 'f'"
    ).fetchall()
    return {r[0] for r in rows}


def test_the_tenant_lookup_is_a_cached_plan_that_keeps_its_guards(tenants: Tenants) -> None:
    """plpgsql caches its plan per session (a LANGUAGE sql definer function is planned on every
    call); it must stay SECURITY DEFINER with a pinned search_path, executable by the app."""
    with psycopg.connect(tenants.owner_url) as owner:
        language, definer, config = function(owner, "refresh_token_clinic")
        assert language == "plpgsql"
        assert definer
        assert config == ["search_path=atendeai, pg_temp"]
    with psycopg.connect(tenants.app_url) as app:
        found = app.execute(
            "SELECT atendeai.refresh_token_clinic(%s)::text", [token_hash("clinic-b")]
        ).fetchone()
        assert found == (tenants.b,)
        missing = app.execute(
            "SELECT atendeai.refresh_token_clinic(%s)", [token_hash("none")]
        ).fetchone()
        assert missing == (None,)


def test_updated_at_is_touched_without_a_set_clause_and_without_the_callers_path(
    tenants: Tenants,
) -> None:
    """No SET clause (no GUC nesting per row), and a caller's search_path that puts its own
    now() first still cannot change what the trigger writes: the body names pg_catalog."""
    with psycopg.connect(tenants.owner_url) as owner:
        language, definer, config = function(owner, "touch_updated_at")
        assert (language, definer, config) == ("plpgsql", False, None)
        owner.execute("CREATE SCHEMA evil")
        owner.execute(
            "CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE sql"
            " AS $$ SELECT timestamptz '2000-01-01' $$"
        )
        owner.execute("SET search_path = evil, pg_catalog, atendeai")
        owner.execute("UPDATE atendeai.sessions SET last_seen_at = NULL WHERE clinic_id = %s",
                      [tenants.a])  # fmt: skip
        row = owner.execute(
            "SELECT bool_and(updated_at > pg_catalog.now() - interval '1 minute')"
            " FROM atendeai.sessions WHERE clinic_id = %s",
            [tenants.a],
        ).fetchone()
        assert row == (True,)


def test_a_token_still_cannot_name_a_clinic_other_than_its_sessions(tenants: Tenants) -> None:
    """Without its own key to clinics, a refresh token's clinic is held by its key to
    sessions(clinic_id, id): another clinic's id, or one that does not exist, is refused."""
    with psycopg.connect(tenants.owner_url) as owner:
        assert CLINIC_FK not in foreign_keys(owner)
        session_a = owner.execute(
            "SELECT id FROM atendeai.sessions WHERE clinic_id = %s", [tenants.a]
        ).fetchone()
        assert session_a is not None
        for clinic in (tenants.b, "00000000-0000-0000-0000-000000000000"):
            with pytest.raises(psycopg.errors.ForeignKeyViolation):
                owner.execute(
                    "INSERT INTO atendeai.refresh_tokens"
                    " (clinic_id, session_id, token_hash, expires_at)"
                    " VALUES (%s, %s, %s, now() + interval '1 day')",
                    [clinic, session_a[0], token_hash(f"moved-{clinic}")],
                )
            owner.rollback()


def test_deleting_a_clinic_still_deletes_its_refresh_tokens(tenants: Tenants) -> None:
    with psycopg.connect(tenants.owner_url) as owner:
        owner.execute("DELETE FROM atendeai.clinics WHERE id = %s", [tenants.a])
        left = owner.execute(
            "SELECT count(*) FILTER (WHERE clinic_id = %s), count(*) FILTER (WHERE clinic_id = %s)"
            " FROM atendeai.refresh_tokens",
            [tenants.a, tenants.b],
        ).fetchone()
        assert left == (0, 1)


def test_the_app_still_reaches_only_its_own_tokens(tenants: Tenants) -> None:
    with psycopg.connect(tenants.app_url) as app:
        as_clinic(app, tenants.a)
        rows = app.execute("SELECT clinic_id::text FROM atendeai.refresh_tokens").fetchall()
        assert rows == [(tenants.a,)]


def test_the_downgrade_restores_0004s_functions_and_key(tenants: Tenants) -> None:
    migrations.rollback(tenants.owner_url, to="0004")
    with psycopg.connect(tenants.owner_url) as owner:
        assert CLINIC_FK in foreign_keys(owner)
        assert function(owner, "refresh_token_clinic") == (
            "sql",
            True,
            ["search_path=atendeai, pg_temp"],
        )
        assert function(owner, "touch_updated_at") == (
            "plpgsql",
            False,
            ["search_path=pg_catalog, pg_temp"],
        )
    migrations.upgrade(tenants.owner_url)
    with psycopg.connect(tenants.owner_url) as owner:
        assert CLINIC_FK not in foreign_keys(owner)
        assert function(owner, "refresh_token_clinic")[0] == "plpgsql"
