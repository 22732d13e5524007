"""completion callbacks: one row per job or bot request given a callback_url, delivered
under a lease like every unit of work (docs/callbacks.md)

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "callback",
        sa.Column("id", AutoString(length=32), nullable=False),
        sa.Column("subject", sa.String(length=16), nullable=False),
        sa.Column("subject_id", AutoString(length=32), nullable=False),
        sa.Column("url_sealed", AutoString(), nullable=False),
        sa.Column("url_shown", AutoString(length=512), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("event", AutoString(length=64), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", AutoString(), nullable=True),
        sa.Column("lease_owner", AutoString(length=255), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_token", AutoString(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("subject", "subject_id", name="uq_callback_subject"),
    )
    op.create_index("ix_callback_due", "callback", ["status", "lease_expires_at"])


def downgrade() -> None:
    op.drop_index("ix_callback_due", table_name="callback")
    op.drop_table("callback")
