"""a chunk's worker host: the host name of the Dask worker that transcribed it, beside its
pid (a pid alone names no process once chunks run on several hosts)

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("transcription_chunk") as table:
        table.add_column(sa.Column("worker_host", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("transcription_chunk") as table:
        table.drop_column("worker_host")
