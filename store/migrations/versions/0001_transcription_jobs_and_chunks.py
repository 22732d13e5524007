"""transcription jobs and chunks

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "transcription_job",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("source_name", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
        sa.Column("source_path", sqlmodel.sql.sqltypes.AutoString(length=4096), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("duration_seconds", sa.Float(), nullable=True),
        sa.Column("language", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=True),
        sa.Column("chunks_total", sa.Integer(), nullable=False),
        sa.Column("chunks_done", sa.Integer(), nullable=False),
        sa.Column("chunks_failed", sa.Integer(), nullable=False),
        sa.Column("audio_seconds_done", sa.Float(), nullable=False),
        sa.Column("output_dir", sqlmodel.sql.sqltypes.AutoString(length=4096), nullable=True),
        sa.Column("flow_run_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("work_pool", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
        sa.Column("notification_error", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("transcription_job", schema=None) as batch_op:
        batch_op.create_index("ix_transcription_job_created", ["created_at", "id"], unique=False)
        batch_op.create_index(batch_op.f("ix_transcription_job_status"), ["status"], unique=False)

    op.create_table(
        "transcription_chunk",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("start_seconds", sa.Float(), nullable=False),
        sa.Column("end_seconds", sa.Float(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("asr_seconds", sa.Float(), nullable=True),
        sa.Column("worker_pid", sa.Integer(), nullable=True),
        sa.Column("segments", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["transcription_job.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "index", name="uq_transcription_chunk_job_index"),
    )
    with op.batch_alter_table("transcription_chunk", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_transcription_chunk_job_id"), ["job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("transcription_chunk", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_transcription_chunk_job_id"))

    op.drop_table("transcription_chunk")
    with op.batch_alter_table("transcription_job", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_transcription_job_status"))
        batch_op.drop_index("ix_transcription_job_created")

    op.drop_table("transcription_job")
