"""a callback's kind: a signed POST to a client's callback_url (webhook), or the follow-up
of the Discord interaction a /transcribe job came from (discord; its URL sealed like the
others, docs/discord-transcribe.md)

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("callback") as table:
        table.add_column(
            sa.Column("kind", sa.String(length=16), nullable=False, server_default="webhook")
        )


def downgrade() -> None:
    with op.batch_alter_table("callback") as table:
        table.drop_column("kind")
