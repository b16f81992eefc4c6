"""Core identity tables: clinics, users, sessions, refresh_tokens, api_keys, audit_log.

Tenant consistency is enforced by the database, not only by the application: a child row
references its parent through (clinic_id, id), so a session can never point at a user of
another clinic even if a bug passes the wrong ids (RLS does not check foreign keys).

audit_log is partitioned by RANGE on `at`, one partition per UTC month plus a DEFAULT one:
- it is append-only and queried by time window; old months are detached/dropped whole for
  retention instead of a slow, bloating DELETE;
- HASH on clinic_id is not possible: clinic_id is NULL for events of unknown clinics, and every
  column of a partition key must be in the primary key, hence NOT NULL. The key is (id, at).
`atendeai.ensure_audit_log_partitions(months_ahead)` creates the coming months (run it
monthly; this migration creates the current month and three ahead). Rows that fell into the
DEFAULT partition are moved when their month is created, so attaching never fails.
audit_log has no foreign key to clinics: audit records outlive the clinic they describe.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, BYTEA, INET, JSONB, TIMESTAMP, UUID

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "atendeai"
TZ = TIMESTAMP(timezone=True)
MUTABLE_TABLES = ("clinics", "users", "sessions", "refresh_tokens", "api_keys")


def _id() -> sa.Column[object]:
    return sa.Column("id", UUID, primary_key=True, server_default=sa.text("gen_random_uuid()"))


def _clinic_id() -> sa.Column[object]:
    return sa.Column("clinic_id", UUID, nullable=False)


def _clinic_fk() -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["clinic_id"], [f"{SCHEMA}.clinics.id"], ondelete="CASCADE")


def _timestamps() -> list[sa.Column[object]]:
    return [
        sa.Column("created_at", TZ, nullable=False, server_default=sa.text("now()")),
        sa.Column("updated_at", TZ, nullable=False, server_default=sa.text("now()")),
    ]


def _status_check(*values: str) -> sa.CheckConstraint:
    allowed = ", ".join(f"'{v}'" for v in values)
    return sa.CheckConstraint(f"status IN ({allowed})", name="status")


TOUCH_UPDATED_AT = f"""
CREATE FUNCTION {SCHEMA}.touch_updated_at() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$
"""

ENSURE_AUDIT_LOG_PARTITIONS = f"""
CREATE FUNCTION {SCHEMA}.ensure_audit_log_partitions(p_months_ahead integer DEFAULT 3)
RETURNS integer LANGUAGE plpgsql SET search_path = {SCHEMA}, pg_temp AS $$
DECLARE
    v_month timestamp := date_trunc('month', now() AT TIME ZONE 'UTC');
    v_from timestamptz;
    v_to timestamptz;
    v_name text;
    v_created integer := 0;
BEGIN
    FOR i IN 0..p_months_ahead LOOP
        v_from := (v_month + make_interval(months => i)) AT TIME ZONE 'UTC';
        v_to := (v_month + make_interval(months => i + 1)) AT TIME ZONE 'UTC';
        v_name := 'audit_log_' || to_char(v_month + make_interval(months => i), 'YYYY_MM');
        CONTINUE WHEN to_regclass('{SCHEMA}.' || v_name) IS NOT NULL;
        EXECUTE format(
            'CREATE TABLE {SCHEMA}.%I'
            ' (LIKE {SCHEMA}.audit_log INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', v_name);
        EXECUTE format(
            'WITH moved AS (DELETE FROM {SCHEMA}.audit_log_default'
            ' WHERE at >= %L AND at < %L RETURNING *)'
            ' INSERT INTO {SCHEMA}.%I SELECT * FROM moved', v_from, v_to, v_name);
        EXECUTE format(
            'ALTER TABLE {SCHEMA}.audit_log ATTACH PARTITION {SCHEMA}.%I'
            ' FOR VALUES FROM (%L) TO (%L)', v_name, v_from, v_to);
        v_created := v_created + 1;
    END LOOP;
    RETURN v_created;
END
$$
"""


def upgrade() -> None:
    op.execute(TOUCH_UPDATED_AT)

    op.create_table(
        "clinics",
        _id(),
        sa.Column("slug", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="active"),
        sa.Column("settings", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        *_timestamps(),
        sa.UniqueConstraint("slug"),
        sa.CheckConstraint("slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'", name="slug_format"),
        sa.CheckConstraint("char_length(name) BETWEEN 1 AND 200", name="name_length"),
        _status_check("active", "disabled"),
        sa.CheckConstraint("jsonb_typeof(settings) = 'object'", name="settings_object"),
        schema=SCHEMA,
    )

    op.create_table(
        "users",
        _id(),
        _clinic_id(),
        sa.Column("email", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=True),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("role", sa.Text, nullable=False, server_default="staff"),
        sa.Column("status", sa.Text, nullable=False, server_default="active"),
        sa.Column("last_login_at", TZ, nullable=True),
        *_timestamps(),
        _clinic_fk(),
        sa.UniqueConstraint("clinic_id", "id"),
        sa.CheckConstraint(
            "char_length(email) BETWEEN 3 AND 320 AND position('@' IN email) > 1",
            name="email_format",
        ),
        sa.CheckConstraint("char_length(name) <= 200", name="name_length"),
        sa.CheckConstraint("password_hash <> ''", name="password_hash_present"),
        sa.CheckConstraint("role IN ('owner', 'admin', 'staff')", name="role"),
        _status_check("active", "disabled"),
        schema=SCHEMA,
    )
    op.create_index(
        "users_clinic_email_key",
        "users",
        ["clinic_id", sa.text("lower(email)")],
        unique=True,
        schema=SCHEMA,
    )

    op.create_table(
        "sessions",
        _id(),
        _clinic_id(),
        sa.Column("user_id", UUID, nullable=False),
        sa.Column("expires_at", TZ, nullable=False),
        sa.Column("revoked_at", TZ, nullable=True),
        sa.Column("revoked_reason", sa.Text, nullable=True),
        sa.Column("ip", INET, nullable=True),
        sa.Column("user_agent", sa.Text, nullable=True),
        sa.Column("last_seen_at", TZ, nullable=True),
        *_timestamps(),
        _clinic_fk(),
        sa.ForeignKeyConstraint(
            ["clinic_id", "user_id"],
            [f"{SCHEMA}.users.clinic_id", f"{SCHEMA}.users.id"],
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("clinic_id", "id"),
        sa.CheckConstraint(
            "revoked_reason IS NULL OR revoked_at IS NOT NULL", name="reason_needs_revoked_at"
        ),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_sessions_user_id_active",
        "sessions",
        ["user_id"],
        postgresql_where=sa.text("revoked_at IS NULL"),
        schema=SCHEMA,
    )
    op.create_index(None, "sessions", ["clinic_id", "user_id"], schema=SCHEMA)

    op.create_table(
        "refresh_tokens",
        _id(),
        _clinic_id(),
        sa.Column("session_id", UUID, nullable=False),
        sa.Column("token_hash", BYTEA, nullable=False),
        sa.Column("expires_at", TZ, nullable=False),
        sa.Column("used_at", TZ, nullable=True),
        sa.Column("replaced_by", UUID, nullable=True),
        sa.Column("revoked_at", TZ, nullable=True),
        *_timestamps(),
        _clinic_fk(),
        sa.ForeignKeyConstraint(
            ["clinic_id", "session_id"],
            [f"{SCHEMA}.sessions.clinic_id", f"{SCHEMA}.sessions.id"],
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["replaced_by"], [f"{SCHEMA}.refresh_tokens.id"], ondelete="SET NULL"
        ),
        sa.UniqueConstraint("token_hash"),
        sa.CheckConstraint("octet_length(token_hash) = 32", name="token_hash_sha256"),
        schema=SCHEMA,
    )
    op.create_index(None, "refresh_tokens", ["clinic_id", "session_id"], schema=SCHEMA)
    op.create_index(None, "refresh_tokens", ["replaced_by"], schema=SCHEMA)

    op.create_table(
        "api_keys",
        _id(),
        _clinic_id(),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("prefix", sa.Text, nullable=False),
        sa.Column("key_hash", BYTEA, nullable=False),
        sa.Column("scopes", ARRAY(sa.Text), nullable=False, server_default=sa.text("'{}'")),
        sa.Column("expires_at", TZ, nullable=True),
        sa.Column("revoked_at", TZ, nullable=True),
        sa.Column("last_used_at", TZ, nullable=True),
        *_timestamps(),
        _clinic_fk(),
        sa.UniqueConstraint("key_hash"),
        sa.CheckConstraint("char_length(name) BETWEEN 1 AND 200", name="name_length"),
        sa.CheckConstraint("char_length(prefix) BETWEEN 1 AND 32", name="prefix_length"),
        schema=SCHEMA,
    )
    op.create_index(None, "api_keys", ["clinic_id"], schema=SCHEMA)

    for table in MUTABLE_TABLES:
        op.execute(
            f"CREATE TRIGGER touch_updated_at BEFORE UPDATE ON {SCHEMA}.{table} "
            f"FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.touch_updated_at()"
        )

    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), nullable=False),
        sa.Column("at", TZ, nullable=False, server_default=sa.text("now()")),
        sa.Column("clinic_id", UUID, nullable=True),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("target", sa.Text, nullable=True),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("ip", INET, nullable=True),
        sa.Column("detail", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.text("now()")),
        sa.PrimaryKeyConstraint("id", "at"),
        sa.CheckConstraint("outcome IN ('success', 'failure', 'denied')", name="outcome"),
        sa.CheckConstraint("actor <> '' AND action <> ''", name="actor_action_present"),
        sa.CheckConstraint("jsonb_typeof(detail) = 'object'", name="detail_object"),
        schema=SCHEMA,
        postgresql_partition_by="RANGE (at)",
    )
    op.create_index(None, "audit_log", ["clinic_id", "at"], schema=SCHEMA)
    op.execute(f"CREATE TABLE {SCHEMA}.audit_log_default PARTITION OF {SCHEMA}.audit_log DEFAULT")
    op.execute(ENSURE_AUDIT_LOG_PARTITIONS)
    op.execute(f"REVOKE ALL ON FUNCTION {SCHEMA}.ensure_audit_log_partitions(integer) FROM PUBLIC")
    op.execute(f"SELECT {SCHEMA}.ensure_audit_log_partitions(3)")


def downgrade() -> None:
    op.drop_table("audit_log", schema=SCHEMA)
    op.execute(f"DROP FUNCTION {SCHEMA}.ensure_audit_log_partitions(integer)")
    for table in ("api_keys", "refresh_tokens", "sessions", "users", "clinics"):
        op.drop_table(table, schema=SCHEMA)
    op.execute(f"DROP FUNCTION {SCHEMA}.touch_updated_at()")
