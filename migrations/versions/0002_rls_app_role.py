"""Row level security, the atendeai_app role and the pre-tenant lookup functions.

Every tenant table gets RLS ENABLED and FORCED with a policy for atendeai_app on
`clinic_id = nullif(current_setting('atendeai.clinic_id', true), '')::uuid`: with no clinic
set (or an empty one, what a transaction-local setting leaves behind) no row matches. Other
non-owner roles have no policy, so they see nothing. The app sets the clinic per transaction
with `SELECT set_config('atendeai.clinic_id', <uuid>, true)`.

audit_log is append-only for the app: INSERT and SELECT granted, no UPDATE/DELETE. An event of
an unknown clinic (clinic_id NULL) may be inserted, but is visible to no tenant (nor to
INSERT ... RETURNING, which checks the SELECT policy: do not use RETURNING there).

The role is cluster-wide while this migration runs per database: it is created only if
missing. The downgrade drops what it owns/was granted in THIS database and drops the role only
when no other database still depends on it. Its password is never here: `atendeai migrate up`
(or env.py with ATENDEAI_APP_DB_PASSWORD) sets it after the migrations.

The functions are SECURITY DEFINER and rely on the migration owner bypassing RLS (superuser or
BYPASSRLS, as the stack's owner role is): the upgrade checks that instead of creating
functions that would silently find nothing.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "atendeai"
ROLE = "atendeai_app"
CURRENT_CLINIC = "nullif(current_setting('atendeai.clinic_id', true), '')::uuid"
TENANT_TABLES = ("users", "sessions", "refresh_tokens", "api_keys")

CREATE_ROLE = f"""
DO $$
BEGIN
    IF NOT (SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user) THEN
        RAISE EXCEPTION 'the migration owner % must be a superuser or have BYPASSRLS',
            current_user;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN
        BEGIN
            CREATE ROLE {ROLE} LOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- created meanwhile by a migration of another database
        END;
    END IF;
END
$$
"""

DROP_ROLE = f"""
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN
        DROP OWNED BY {ROLE};
        BEGIN
            DROP ROLE {ROLE};
        EXCEPTION WHEN dependent_objects_still_exist THEN
            RAISE NOTICE 'role {ROLE} kept: other databases still use it';
        END;
    END IF;
END
$$
"""

FUNCTION_BODIES = {
    "clinic_by_slug(text)": f"""
CREATE FUNCTION {SCHEMA}.clinic_by_slug(p_slug text) RETURNS TABLE(id uuid, status text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = {SCHEMA}, pg_temp AS $$
    SELECT c.id, c.status FROM {SCHEMA}.clinics AS c WHERE c.slug = lower(p_slug)
$$""",
    "refresh_token_clinic(bytea)": f"""
CREATE FUNCTION {SCHEMA}.refresh_token_clinic(p_token_hash bytea) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = {SCHEMA}, pg_temp AS $$
    SELECT t.clinic_id FROM {SCHEMA}.refresh_tokens AS t WHERE t.token_hash = p_token_hash
$$""",
    "api_key_clinic(bytea)": f"""
CREATE FUNCTION {SCHEMA}.api_key_clinic(p_key_hash bytea) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = {SCHEMA}, pg_temp AS $$
    SELECT k.clinic_id FROM {SCHEMA}.api_keys AS k WHERE k.key_hash = p_key_hash
$$""",
}


def _protect(table: str, column: str = "clinic_id") -> None:
    op.execute(f"ALTER TABLE {SCHEMA}.{table} ENABLE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {SCHEMA}.{table} FORCE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY tenant_isolation ON {SCHEMA}.{table} FOR ALL TO {ROLE} "
        f"USING ({column} = {CURRENT_CLINIC}) WITH CHECK ({column} = {CURRENT_CLINIC})"
    )
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {SCHEMA}.{table} TO {ROLE}")


def _unprotect(table: str) -> None:
    op.execute(f"REVOKE ALL ON {SCHEMA}.{table} FROM {ROLE}")
    op.execute(f"DROP POLICY tenant_isolation ON {SCHEMA}.{table}")
    op.execute(f"ALTER TABLE {SCHEMA}.{table} NO FORCE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {SCHEMA}.{table} DISABLE ROW LEVEL SECURITY")


def upgrade() -> None:
    op.execute(CREATE_ROLE)
    op.execute(f"ALTER ROLE {ROLE} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE")
    op.execute(f"GRANT USAGE ON SCHEMA {SCHEMA} TO {ROLE}")

    _protect("clinics", column="id")
    for table in TENANT_TABLES:
        _protect(table)

    op.execute(f"ALTER TABLE {SCHEMA}.audit_log ENABLE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {SCHEMA}.audit_log FORCE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY audit_insert ON {SCHEMA}.audit_log FOR INSERT TO {ROLE} "
        f"WITH CHECK (clinic_id IS NULL OR clinic_id = {CURRENT_CLINIC})"
    )
    op.execute(
        f"CREATE POLICY audit_select ON {SCHEMA}.audit_log FOR SELECT TO {ROLE} "
        f"USING (clinic_id = {CURRENT_CLINIC})"
    )
    op.execute(f"GRANT SELECT, INSERT ON {SCHEMA}.audit_log TO {ROLE}")
    op.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {SCHEMA} TO {ROLE}")

    for signature, body in FUNCTION_BODIES.items():
        op.execute(body)
        op.execute(f"REVOKE ALL ON FUNCTION {SCHEMA}.{signature} FROM PUBLIC")
        op.execute(f"GRANT EXECUTE ON FUNCTION {SCHEMA}.{signature} TO {ROLE}")


def downgrade() -> None:
    for signature in reversed(list(FUNCTION_BODIES)):
        op.execute(f"DROP FUNCTION {SCHEMA}.{signature}")

    op.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {SCHEMA} FROM {ROLE}")
    op.execute(f"REVOKE ALL ON {SCHEMA}.audit_log FROM {ROLE}")
    op.execute(f"DROP POLICY audit_select ON {SCHEMA}.audit_log")
    op.execute(f"DROP POLICY audit_insert ON {SCHEMA}.audit_log")
    op.execute(f"ALTER TABLE {SCHEMA}.audit_log NO FORCE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {SCHEMA}.audit_log DISABLE ROW LEVEL SECURITY")

    for table in reversed(TENANT_TABLES):
        _unprotect(table)
    _unprotect("clinics")

    op.execute(f"REVOKE ALL ON SCHEMA {SCHEMA} FROM {ROLE}")
    op.execute(DROP_ROLE)
