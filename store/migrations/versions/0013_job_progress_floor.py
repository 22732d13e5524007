"""a job's progress floor: the audio seconds an earlier attempt had transcribed, so that a
job taken over (its coordinator died, its lease ran out) never shows its progress going back

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("transcription_job") as table:
        table.add_column(
            sa.Column("progress_floor_seconds", sa.Float(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("transcription_job") as table:
        table.drop_column("progress_floor_seconds")
