"""bot requests from Discord interactions: when the interaction was created (its token lives
15 minutes from then), the follow-up's state, and the expiry notice's lease (its expiry is
when the notice is due), with an index for the maintenance loop's look-up of notices due
(docs/discord-expiry.md)

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable columns only: rows of the previous release stay as they are (not interactions).
    op.add_column("bot_request", sa.Column("interaction_at", sa.DateTime(timezone=True)))
    op.add_column("bot_request", sa.Column("followup", sa.String(length=16)))
    op.add_column("bot_request", sa.Column("notice_due_at", sa.DateTime(timezone=True)))
    op.add_column("bot_request", sa.Column("notice_token", AutoString(length=32)))
    op.create_index("ix_bot_request_notice", "bot_request", ["followup", "notice_due_at"])


def downgrade() -> None:
    op.drop_index("ix_bot_request_notice", table_name="bot_request")
    with op.batch_alter_table("bot_request") as batch:  # SQLite rebuilds the table
        batch.drop_column("notice_token")
        batch.drop_column("notice_due_at")
        batch.drop_column("followup")
        batch.drop_column("interaction_at")
