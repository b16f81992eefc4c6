"""The migrations themselves, through the library, against a real PostgreSQL."""

from __future__ import annotations

import psycopg
import pytest

from atendeai_ctl.db import migrations
from atendeai_ctl.errors import AtendeaiError
from tests.db_helpers import (
    APP_ROLE,
    FAILING_MIGRATIONS,
    SCHEMA_TABLES,
    current,
    dbname,
    schema_dump,
    tables,
)
from tests.servers import PostgresServer, postgres_server


def revisions() -> list[str]:
    return [r.revision for r in migrations.history()]


def role_exists() -> str:
    return f"SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}'"


def test_exactly_one_head() -> None:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrations.alembic_config(None))
    assert len(script.get_heads()) == 1


def test_up_from_empty_reaches_head(database_url: str) -> None:
    outcome = migrations.upgrade(database_url)
    state = migrations.status(database_url)
    assert outcome.applied == revisions()
    assert state.current == state.head == revisions()[-1]
    assert state.pending == []
    assert tables(database_url) == SCHEMA_TABLES


def test_stairway_each_revision_up_down_up(database_url: str) -> None:
    """Each downgrade restores exactly the schema its upgrade started from."""
    for revision in revisions():
        before = schema_dump(database_url)
        migrations.upgrade(database_url, revision)
        after = schema_dump(database_url)
        migrations.rollback(database_url, steps=1)
        assert schema_dump(database_url) == before, f"downgrade of {revision} left changes"
        migrations.upgrade(database_url, revision)
        assert schema_dump(database_url) == after
        assert current(database_url) == revision


def test_up_down_up_gives_an_identical_schema(database_url: str) -> None:
    migrations.upgrade(database_url)
    first = schema_dump(database_url)
    migrations.rollback(database_url, to="base")
    migrations.upgrade(database_url)
    assert schema_dump(database_url) == first
    assert "CREATE TABLE atendeai.clinics" in first


def test_down_to_base_leaves_no_trace(database_url: str) -> None:
    empty = schema_dump(database_url)
    migrations.upgrade(database_url)
    outcome = migrations.rollback(database_url, to="base")
    assert outcome.applied == list(reversed(revisions()))
    assert tables(database_url) == set()
    assert schema_dump(database_url) == empty
    with psycopg.connect(database_url) as conn:
        leftovers = conn.execute(
            "SELECT 'function ' || p.proname FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'atendeai' "
            "UNION ALL SELECT 'type ' || t.typname FROM pg_type t "
            "JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = 'atendeai' "
            "UNION ALL SELECT 'policy ' || policyname FROM pg_policies "
            "WHERE schemaname = 'atendeai' "
            "UNION ALL SELECT 'schema ' || nspname FROM pg_namespace WHERE nspname = 'atendeai'"
        ).fetchall()
    assert leftovers == []
    assert migrations.status(database_url).current is None


def test_a_failing_migration_leaves_no_trace(database_url: str) -> None:
    migrations.upgrade(database_url)
    before = schema_dump(database_url)
    with pytest.raises(AtendeaiError) as raised:
        migrations.upgrade(database_url, extra_version_dirs=[FAILING_MIGRATIONS])
    assert raised.value.code == "failed"
    assert "9999" in raised.value.message and "division by zero" in raised.value.message
    assert raised.value.hint is not None and "stays at 0005" in raised.value.hint
    assert schema_dump(database_url) == before
    assert current(database_url) == revisions()[-1]
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM atendeai.clinics").fetchone() == (0,)


def test_a_failing_migration_keeps_the_ones_before_it(database_url: str) -> None:
    assert revisions()[-1] == "0005", "re-base tests/failing_migrations on the new head"
    with pytest.raises(AtendeaiError) as raised:
        migrations.upgrade(database_url, extra_version_dirs=[FAILING_MIGRATIONS])
    assert raised.value.code == "failed"
    assert current(database_url) == "0005"
    assert "should_not_exist" not in tables(database_url)


def test_a_database_ahead_of_the_code_is_refused(database_url: str) -> None:
    migrations.upgrade(database_url)
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE atendeai.alembic_version SET version_num = 'f00d'")
    for call in (migrations.upgrade, migrations.status, migrations.plan_rollback):
        with pytest.raises(AtendeaiError) as raised:
            call(database_url)
        assert raised.value.code == "conflict"
        assert "'f00d'" in raised.value.message


def test_unknown_revision_is_not_found(database_url: str) -> None:
    with pytest.raises(AtendeaiError) as raised:
        migrations.upgrade(database_url, "nope")
    assert raised.value.code == "not_found"
    with pytest.raises(AtendeaiError) as raised:
        migrations.rollback(database_url, to="nope")
    assert raised.value.code == "not_found"
    assert tables(database_url) == set()


def test_rollback_steps_and_to(database_url: str) -> None:
    migrations.upgrade(database_url)
    assert migrations.rollback(database_url, steps=4).target == "0001"
    assert current(database_url) == "0001"
    with pytest.raises(AtendeaiError) as raised:
        migrations.rollback(database_url, steps=2)
    assert raised.value.code == "invalid"
    migrations.upgrade(database_url)
    plan = migrations.rollback(database_url, to="0002", dry_run=True)
    assert [r.revision for r in plan.planned] == ["0005", "0004", "0003"]
    assert current(database_url) == "0005"


def test_app_role_is_a_plain_login_role_with_the_given_password(
    database_url: str, pg: PostgresServer
) -> None:
    outcome = migrations.upgrade(database_url, app_password="first-secret")
    assert outcome.app_password_set
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT rolcanlogin, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb "
            "FROM pg_roles WHERE rolname = %s",
            [APP_ROLE],
        ).fetchone()
        owned = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'atendeai' AND pg_get_userbyid(c.relowner) = %s",
            [APP_ROLE],
        ).fetchone()
    assert row == (True, False, False, False, False)
    assert owned == (0,)
    app_url = pg.url(dbname(database_url), user=APP_ROLE, password="first-secret")
    psycopg.connect(app_url).close()

    migrations.upgrade(database_url, app_password="second-secret")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(app_url).close()
    psycopg.connect(pg.url(dbname(database_url), APP_ROLE, "second-secret")).close()


def test_the_password_never_appears_in_a_statement(database_url: str) -> None:
    from atendeai_ctl.db.roles import scram_sha256_verifier, set_password_sql

    statement = set_password_sql("hunter2-secret")
    assert "hunter2" not in statement
    assert scram_sha256_verifier("x", salt=b"0" * 16).startswith("SCRAM-SHA-256$4096:")


def test_role_is_kept_while_another_database_uses_it() -> None:
    """The cluster-wide app role goes with the last database that uses it, so this runs on a
    cluster of its own: the session's holds conftest's migrated template."""
    with postgres_server() as pg:
        _role_is_kept_while_another_database_uses_it(pg.url(pg.create_database()), pg)


def _role_is_kept_while_another_database_uses_it(database_url: str, pg: PostgresServer) -> None:
    other = pg.create_database()
    try:
        migrations.upgrade(database_url)
        migrations.upgrade(pg.url(other))
        migrations.rollback(pg.url(other), to="base")
        with psycopg.connect(database_url) as conn:
            assert conn.execute(role_exists()).fetchone() == (1,)
    finally:
        pg.drop_database(other)
    migrations.rollback(database_url, to="base")
    with psycopg.connect(database_url) as conn:
        assert conn.execute(role_exists()).fetchone() is None
    migrations.upgrade(database_url)
    with psycopg.connect(database_url) as conn:
        assert conn.execute(role_exists()).fetchone() == (1,)


def test_offline_sql_needs_no_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ATENDEAI_DATABASE_URL", raising=False)
    up = migrations.offline_sql()
    assert "CREATE TABLE atendeai.clinics" in up
    assert "pg_advisory_lock" in up
    assert "INSERT INTO atendeai.alembic_version" in up
    down = migrations.offline_sql("0003:0001")
    assert "DROP TABLE atendeai.appointments" in down
    assert "CREATE TABLE" not in down
    partial = migrations.offline_sql("0002:0003")
    assert "CREATE TABLE atendeai.patients" in partial
    assert "CREATE TABLE atendeai.clinics" not in partial


def test_constraints_follow_the_naming_convention(database_url: str) -> None:
    migrations.upgrade(database_url)
    prefixes = {"p": "pk_", "f": "fk_", "u": "uq_", "c": "ck_"}
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT c.relname, k.conname, k.contype FROM pg_constraint k "
            "JOIN pg_class c ON c.oid = k.conrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'atendeai' AND NOT c.relispartition "
            "AND c.relname <> 'alembic_version'"
        ).fetchall()
    assert rows
    for table, name, kind in rows:
        assert name.startswith(prefixes[kind] + table), (table, name)


def test_updated_at_is_kept_by_the_trigger(database_url: str) -> None:
    migrations.upgrade(database_url)
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO atendeai.clinics (slug, name, updated_at) "
            "VALUES ('a', 'A', now() - interval '1 day')"
        )
        conn.commit()
        conn.execute("UPDATE atendeai.clinics SET name = 'A2'")
        row = conn.execute(
            "SELECT updated_at > now() - interval '1 minute' FROM atendeai.clinics"
        ).fetchone()
    assert row == (True,)


def test_constraints_reject_bad_rows(database_url: str) -> None:
    migrations.upgrade(database_url)
    bad = [
        "INSERT INTO atendeai.clinics (slug, name) VALUES ('Bad Slug', 'x')",
        "INSERT INTO atendeai.clinics (slug, name) VALUES ('ok', '')",
        "INSERT INTO atendeai.clinics (slug, name, status) VALUES ('ok', 'x', 'gone')",
    ]
    with psycopg.connect(database_url, autocommit=True) as conn:
        for statement in bad:
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute(statement)


def test_audit_log_partitions_are_created_and_default_rows_moved(database_url: str) -> None:
    migrations.upgrade(database_url)
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO atendeai.audit_log (at, actor, action, outcome) "
            "VALUES (now() + interval '8 months', 'cli:test', 'future', 'success')"
        )
        assert conn.execute("SELECT count(*) FROM atendeai.audit_log_default").fetchone() == (1,)
        created = conn.execute("SELECT atendeai.ensure_audit_log_partitions(9)").fetchone()
        assert created is not None and created[0] >= 5
        assert conn.execute("SELECT count(*) FROM atendeai.audit_log_default").fetchone() == (0,)
        where = conn.execute("SELECT tableoid::regclass::text FROM atendeai.audit_log").fetchone()
        assert where is not None and where[0].startswith("atendeai.audit_log_20")
        assert conn.execute("SELECT atendeai.ensure_audit_log_partitions(9)").fetchone() == (0,)


def test_ddl_gives_up_on_a_held_lock(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATENDEAI_MIGRATION_LOCK_TIMEOUT", "500ms")
    migrations.upgrade(database_url, "0001")
    with psycopg.connect(database_url) as blocker:
        blocker.execute("LOCK TABLE atendeai.clinics IN ACCESS SHARE MODE")
        with pytest.raises(AtendeaiError) as raised:
            migrations.upgrade(database_url)
        blocker.rollback()
    assert raised.value.code == "failed"
    assert "0002" in raised.value.message and "lock timeout" in raised.value.message
    assert current(database_url) == "0001"
