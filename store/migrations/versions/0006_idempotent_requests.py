"""idempotent requests: the answer each Idempotency-Key got

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "idempotent_request",
        sa.Column("operation", sa.String(length=64), primary_key=True),
        sa.Column("key", sa.String(length=255), primary_key=True),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("response_body", sa.Text(), nullable=True),
        sa.Column("retry_after", sa.String(length=16), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_idempotent_request_started_at", "idempotent_request", ["started_at"])


def downgrade() -> None:
    op.drop_index("ix_idempotent_request_started_at", table_name="idempotent_request")
    op.drop_table("idempotent_request")
