"""Test only: changes schema and data, then fails, to prove a failed migration leaves no trace.

Revision ID: 9999
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "9999"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "should_not_exist", sa.Column("id", sa.Integer, primary_key=True), schema="atendeai"
    )
    op.add_column("clinics", sa.Column("junk", sa.Text), schema="atendeai")
    op.execute("INSERT INTO atendeai.clinics (slug, name) VALUES ('ghost', 'Ghost')")
    op.execute("SELECT 1 / 0")


def downgrade() -> None:
    op.drop_column("clinics", "junk", schema="atendeai")
    op.drop_table("should_not_exist", schema="atendeai")
