"""an index on bot_request.status alone: /metrics counts bot requests by state at every
scrape, and the (status, created_at) index is too wide for the planner to scan for a count
(a sequential scan of every request; docs/ops-metrics.md)

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_bot_request_status", "bot_request", ["status"])


def downgrade() -> None:
    op.drop_index("ix_bot_request_status", table_name="bot_request")
