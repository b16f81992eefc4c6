"""The atendeai_monitor role: what the monitoring profile's postgres-exporter logs in as.

A LOGIN role that is a member of pg_monitor and nothing else: it reads the statistics views
(pg_stat_database, pg_stat_activity, pg_stat_replication...) and no table of the schema, so a
leaked exporter password exposes counters, not patients. CONNECTION LIMIT keeps a misbehaving
exporter from taking the application's connections.

The role is cluster-wide while this migration runs per database, as in 0002: created only if
missing. Each database that ran this grants it CONNECT explicitly; that grant is what makes
`DROP ROLE` fail while another database still expects the role, so the downgrade revokes its
own grant and drops the role only when no other database holds one. Its password is never here:
`atendeai migrate up` (or env.py with ATENDEAI_MONITOR_DB_PASSWORD) sets it after the
migrations, from the generated secret.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLE = "atendeai_monitor"
CONNECTION_LIMIT = 5

CREATE_ROLE = f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN
        BEGIN
            CREATE ROLE {ROLE} LOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- created meanwhile by a migration of another database
        END;
    END IF;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO {ROLE}', current_database());
END
$$
"""

DROP_ROLE = f"""
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN
        EXECUTE format('REVOKE CONNECT ON DATABASE %I FROM {ROLE}', current_database());
        BEGIN
            DROP ROLE {ROLE};
        EXCEPTION WHEN dependent_objects_still_exist THEN
            RAISE NOTICE 'role {ROLE} kept: other databases still use it';
        END;
    END IF;
END
$$
"""


def upgrade() -> None:
    op.execute(CREATE_ROLE)
    op.execute(
        f"ALTER ROLE {ROLE} LOGIN INHERIT NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE "
        f"NOREPLICATION CONNECTION LIMIT {CONNECTION_LIMIT}"
    )
    op.execute(f"GRANT pg_monitor TO {ROLE}")


def downgrade() -> None:
    op.execute(DROP_ROLE)
