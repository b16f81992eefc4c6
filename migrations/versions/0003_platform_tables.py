"""Platform tables: patients, conversations, messages, appointments (tenant-isolated by RLS).

messages is partitioned by HASH on clinic_id into 8 partitions. Every query the platform makes
is scoped to one clinic (the RLS policy adds `clinic_id = <current clinic>` to all of them), so
pruning sends it to exactly one partition, and tenants spread evenly with no partition
maintenance job (time partitions would need one, see audit_log in 0001). The primary key is
(clinic_id, id) because a partition key column must be part of it. Nothing references
messages, so the composite key costs nothing elsewhere.

Child rows reference their parents through (clinic_id, id), as in 0001: a conversation cannot
belong to a patient of another clinic.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import TIMESTAMP, UUID

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "atendeai"
ROLE = "atendeai_app"
CURRENT_CLINIC = "nullif(current_setting('atendeai.clinic_id', true), '')::uuid"
TZ = TIMESTAMP(timezone=True)
MESSAGE_PARTITIONS = 8
TABLES = ("patients", "conversations", "messages", "appointments")


def _id() -> sa.Column[object]:
    return sa.Column("id", UUID, primary_key=True, server_default=sa.text("gen_random_uuid()"))


def _clinic_id() -> sa.Column[object]:
    return sa.Column("clinic_id", UUID, nullable=False)


def _clinic_fk() -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["clinic_id"], [f"{SCHEMA}.clinics.id"], ondelete="CASCADE")


def _tenant_fk(column: str, parent: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["clinic_id", column],
        [f"{SCHEMA}.{parent}.clinic_id", f"{SCHEMA}.{parent}.id"],
        ondelete="CASCADE",
    )


def _timestamps() -> list[sa.Column[object]]:
    return [
        sa.Column("created_at", TZ, nullable=False, server_default=sa.text("now()")),
        sa.Column("updated_at", TZ, nullable=False, server_default=sa.text("now()")),
    ]


def _protect(table: str) -> None:
    op.execute(
        f"CREATE TRIGGER touch_updated_at BEFORE UPDATE ON {SCHEMA}.{table} "
        f"FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.touch_updated_at()"
    )
    op.execute(f"ALTER TABLE {SCHEMA}.{table} ENABLE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {SCHEMA}.{table} FORCE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY tenant_isolation ON {SCHEMA}.{table} FOR ALL TO {ROLE} "
        f"USING (clinic_id = {CURRENT_CLINIC}) WITH CHECK (clinic_id = {CURRENT_CLINIC})"
    )
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {SCHEMA}.{table} TO {ROLE}")


def upgrade() -> None:
    op.create_table(
        "patients",
        _id(),
        _clinic_id(),
        sa.Column("full_name", sa.Text, nullable=False),
        sa.Column("phone", sa.Text, nullable=True),
        sa.Column("email", sa.Text, nullable=True),
        sa.Column("birth_date", sa.Date, nullable=True),
        sa.Column("notes", sa.Text, nullable=True),
        *_timestamps(),
        _clinic_fk(),
        sa.UniqueConstraint("clinic_id", "id"),
        sa.CheckConstraint("char_length(full_name) BETWEEN 1 AND 200", name="full_name_length"),
        sa.CheckConstraint("char_length(phone) BETWEEN 3 AND 32", name="phone_length"),
        sa.CheckConstraint("position('@' IN email) > 1", name="email_format"),
        sa.CheckConstraint("birth_date >= DATE '1900-01-01'", name="birth_date_range"),
        schema=SCHEMA,
    )
    op.create_index(None, "patients", ["clinic_id", "phone"], schema=SCHEMA)

    op.create_table(
        "conversations",
        _id(),
        _clinic_id(),
        sa.Column("patient_id", UUID, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="open"),
        sa.Column("last_message_at", TZ, nullable=True),
        *_timestamps(),
        _clinic_fk(),
        _tenant_fk("patient_id", "patients"),
        sa.UniqueConstraint("clinic_id", "id"),
        sa.CheckConstraint(
            "channel IN ('whatsapp', 'sms', 'email', 'web', 'phone')", name="channel"
        ),
        sa.CheckConstraint("status IN ('open', 'pending', 'closed')", name="status"),
        schema=SCHEMA,
    )
    op.create_index(None, "conversations", ["clinic_id", "patient_id"], schema=SCHEMA)
    op.create_index(
        "ix_conversations_clinic_id_last_message_at",
        "conversations",
        ["clinic_id", sa.text("last_message_at DESC NULLS LAST")],
        schema=SCHEMA,
    )

    op.create_table(
        "messages",
        sa.Column("id", UUID, nullable=False, server_default=sa.text("gen_random_uuid()")),
        _clinic_id(),
        sa.Column("conversation_id", UUID, nullable=False),
        sa.Column("direction", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("at", TZ, nullable=False, server_default=sa.text("now()")),
        *_timestamps(),
        sa.PrimaryKeyConstraint("clinic_id", "id"),
        _clinic_fk(),
        _tenant_fk("conversation_id", "conversations"),
        sa.CheckConstraint("direction IN ('in', 'out')", name="direction"),
        schema=SCHEMA,
        postgresql_partition_by="HASH (clinic_id)",
    )
    for remainder in range(MESSAGE_PARTITIONS):
        op.execute(
            f"CREATE TABLE {SCHEMA}.messages_p{remainder} PARTITION OF {SCHEMA}.messages "
            f"FOR VALUES WITH (MODULUS {MESSAGE_PARTITIONS}, REMAINDER {remainder})"
        )
    op.create_index(None, "messages", ["clinic_id", "conversation_id", "at"], schema=SCHEMA)

    op.create_table(
        "appointments",
        _id(),
        _clinic_id(),
        sa.Column("patient_id", UUID, nullable=False),
        sa.Column("starts_at", TZ, nullable=False),
        sa.Column("ends_at", TZ, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="scheduled"),
        *_timestamps(),
        _clinic_fk(),
        _tenant_fk("patient_id", "patients"),
        sa.CheckConstraint("ends_at > starts_at", name="ends_after_start"),
        sa.CheckConstraint(
            "status IN ('scheduled', 'confirmed', 'cancelled', 'completed', 'no_show')",
            name="status",
        ),
        schema=SCHEMA,
    )
    op.create_index(None, "appointments", ["clinic_id", "starts_at"], schema=SCHEMA)
    op.create_index(None, "appointments", ["clinic_id", "patient_id"], schema=SCHEMA)

    for table in TABLES:
        _protect(table)


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_table(table, schema=SCHEMA)
