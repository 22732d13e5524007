"""worker heartbeats: one row per live task or batch worker process, upserted at each
heartbeat (docs/ops-health.md)

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worker_heartbeat",
        sa.Column("id", AutoString(length=32), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("pool", AutoString(length=64), nullable=False),
        sa.Column("host", AutoString(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("heartbeat_seconds", sa.Float(), nullable=False),
        sa.Column("in_flight", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_worker_heartbeat_last_seen_at", "worker_heartbeat", ["last_seen_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_worker_heartbeat_last_seen_at", table_name="worker_heartbeat")
    op.drop_table("worker_heartbeat")
