"""video catalogue, batches and the processing log

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

AutoString = sqlmodel.sql.sqltypes.AutoString


def upgrade() -> None:
    op.create_table(
        "video",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source_key", AutoString(length=64), nullable=False),
        sa.Column("source", AutoString(length=4096), nullable=False),
        sa.Column("name", AutoString(length=512), nullable=False),
        sa.Column("duration_seconds", sa.Float(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("batch_id", AutoString(length=32), nullable=True),
        sa.Column("lease_owner", AutoString(length=255), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("result_path", AutoString(length=4096), nullable=True),
        sa.Column("language", AutoString(length=16), nullable=True),
        sa.Column("error", AutoString(), nullable=True),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("source_key"),
    )
    op.create_index("ix_video_status", "video", ["status"])
    op.create_index("ix_video_claimable", "video", ["batch_id", "status"])
    op.create_table(
        "video_batch",
        sa.Column("id", AutoString(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("workers_requested", sa.Integer(), nullable=False),
        sa.Column("videos_total", sa.Integer(), nullable=False),
        sa.Column("flow_run_id", AutoString(length=64), nullable=True),
        sa.Column("note", AutoString(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_video_batch_status", "video_batch", ["status"])
    op.create_table(
        "video_attempt",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("video_id", sa.Integer(), nullable=False),
        sa.Column("batch_id", AutoString(length=32), nullable=True),
        sa.Column("worker", AutoString(length=255), nullable=False),
        sa.Column("outcome", AutoString(length=16), nullable=False),
        sa.Column("error", AutoString(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["video_id"], ["video.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_video_attempt_video_id", "video_attempt", ["video_id"])
    op.create_index("ix_video_attempt_batch_id", "video_attempt", ["batch_id"])


def downgrade() -> None:
    op.drop_table("video_attempt")
    op.drop_table("video_batch")
    op.drop_table("video")
