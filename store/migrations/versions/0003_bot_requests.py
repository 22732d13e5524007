"""bot requests, usage counters, user cooldowns and API key state

Revision ID: 0003
Revises: 0002
"""

from datetime import datetime

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

AutoString = sqlmodel.sql.sqltypes.AutoString


def _when(name: str, nullable: bool = True) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "bot_request",
        sa.Column("id", AutoString(length=32), nullable=False),
        sa.Column("kind", AutoString(length=16), nullable=False),
        sa.Column("prompt", AutoString(), nullable=False),
        sa.Column("user_id", AutoString(length=64), nullable=False),
        sa.Column("channel", AutoString(length=128), nullable=False),
        sa.Column("guild", AutoString(length=64), nullable=True),
        sa.Column("route", AutoString(length=128), nullable=False),
        sa.Column("pool", AutoString(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("destination_block", AutoString(length=128), nullable=True),
        sa.Column("destination_sealed", AutoString(), nullable=True),
        sa.Column("destination_shown", AutoString(length=512), nullable=True),
        sa.Column("provider", AutoString(length=32), nullable=True),
        sa.Column("model", AutoString(length=128), nullable=True),
        sa.Column("key_name", AutoString(length=64), nullable=True),
        sa.Column("upstream_calls", sa.Integer(), nullable=False),
        sa.Column("upstream_seconds", sa.Float(), nullable=True),
        sa.Column("answer_text", AutoString(), nullable=True),
        sa.Column("answer_files", AutoString(), nullable=True),
        sa.Column("error", AutoString(), nullable=True),
        _when("retry_at"),
        sa.Column("worker", AutoString(length=255), nullable=True),
        _when("created_at", nullable=False),
        _when("dispatched_at"),
        _when("started_at"),
        _when("finished_at"),
        sa.Column("delivery_status", sa.String(length=16), nullable=False),
        sa.Column("delivery_attempts", sa.Integer(), nullable=False),
        sa.Column("delivery_messages_sent", sa.Integer(), nullable=False),
        sa.Column("delivery_error", AutoString(), nullable=True),
        _when("next_delivery_at"),
        _when("delivered_at"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_bot_request_delivery", "bot_request", ["delivery_status", "next_delivery_at"]
    )
    op.create_index("ix_bot_request_status_created", "bot_request", ["status", "created_at"])
    op.create_table(
        "usage_counter",
        sa.Column("scope", AutoString(length=200), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("used", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "day"),
    )
    op.create_table(
        "user_cooldown",
        sa.Column("user_id", AutoString(length=64), nullable=False),
        sa.Column("kind", AutoString(length=16), nullable=False),
        _when("last_at", nullable=False),
        sa.PrimaryKeyConstraint("user_id", "kind"),
    )
    op.create_table(
        "api_key_state",
        sa.Column("provider", AutoString(length=32), nullable=False),
        sa.Column("key_name", AutoString(length=64), nullable=False),
        _when("cooled_until", nullable=False),
        sa.Column("reason", AutoString(length=500), nullable=True),
        _when("updated_at", nullable=False),
        sa.PrimaryKeyConstraint("provider", "key_name"),
    )


def downgrade() -> None:
    op.drop_table("api_key_state")
    op.drop_table("user_cooldown")
    op.drop_table("usage_counter")
    op.drop_index("ix_bot_request_status_created", table_name="bot_request")
    op.drop_index("ix_bot_request_delivery", table_name="bot_request")
    op.drop_table("bot_request")
