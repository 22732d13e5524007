"""a chunk's decoded seconds (progress within a chunk); a job's options, dispatch token and
heartbeat

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("transcription_chunk") as batch:
        batch.add_column(sa.Column("seconds_done", sa.Float(), nullable=False, server_default="0"))
    with op.batch_alter_table("transcription_job") as batch:
        batch.add_column(sa.Column("options", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch.add_column(
            sa.Column("dispatch_token", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True)
        )
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("transcription_job") as batch:
        batch.drop_column("heartbeat_at")
        batch.drop_column("dispatch_token")
        batch.drop_column("options")
    with op.batch_alter_table("transcription_chunk") as batch:
        batch.drop_column("seconds_done")
