"""one lease for every workload (store/leases.py): jobs and bot requests get the lease
columns videos had, videos and deliveries a fencing token

Rows in flight when this runs keep working: a job's dispatch token becomes its lease token
(a task run dispatched before the upgrade still starts it) and a job whose coordinator beat
expires when the old heartbeat check would have found it silent; a bot request's lease
expires when the old timestamp check would have found it stranded; held leases get a token.
A process of the previous release must not run beside this one: stop the workers, migrate,
start the new release (docs/leases.md).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op
from alembic.operations import BatchOperations
from sqlmodel.sql.sqltypes import AutoString

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Held before the upgrade: no process of the new release holds these, so any fixed token
# does (it only has to differ from every token a new process is given).
INHERITED = "held-before-0005"
# The previous release's silence thresholds: 60 s without a heartbeat for a job; twice the
# kind's deadline plus 60 s for a bot request (deadlines as bot.yaml shipped them).
JOB_SILENCE_SECONDS = 60
BOT_STRANDED_SECONDS = {"chat": 180, "image": 420, "video": 2460}


def _lease_columns(batch: BatchOperations) -> None:
    batch.add_column(sa.Column("lease_owner", AutoString(length=255), nullable=True))
    batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
    batch.add_column(sa.Column("lease_token", AutoString(length=32), nullable=True))


def _plus_seconds(column: str, seconds: str) -> str:
    """SQL for ``column`` + ``seconds`` (an SQL expression), on either database."""
    if op.get_bind().dialect.name == "postgresql":
        return f"{column} + make_interval(secs => {seconds})"
    # SQLAlchemy keeps SQLite datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff' text, in UTC.
    return f"strftime('%Y-%m-%d %H:%M:%f000', {column}, '+' || ({seconds}) || ' seconds')"


def upgrade() -> None:
    with op.batch_alter_table("video") as batch:
        batch.add_column(sa.Column("lease_token", AutoString(length=32), nullable=True))
    op.execute(
        f"UPDATE video SET lease_token = '{INHERITED}' "
        "WHERE status = 'claimed' AND lease_owner IS NOT NULL"
    )

    with op.batch_alter_table("transcription_job") as batch:
        _lease_columns(batch)
    silent = _plus_seconds("heartbeat_at", str(JOB_SILENCE_SECONDS))
    op.execute(
        f"UPDATE transcription_job SET lease_token = dispatch_token, "
        f"lease_expires_at = CASE WHEN heartbeat_at IS NULL THEN NULL ELSE {silent} END, "
        "lease_owner = CASE WHEN heartbeat_at IS NULL THEN NULL ELSE 'before-0005' END "
        "WHERE status IN ('queued', 'running')"
    )
    with op.batch_alter_table("transcription_job") as batch:
        batch.drop_column("heartbeat_at")
        batch.drop_column("dispatch_token")

    with op.batch_alter_table("bot_request") as batch:
        _lease_columns(batch)
        batch.add_column(sa.Column("delivery_token", AutoString(length=32), nullable=True))
    stranded = " ".join(f"WHEN '{k}' THEN {s}" for k, s in BOT_STRANDED_SECONDS.items())
    stranded = f"(CASE kind {stranded} ELSE {max(BOT_STRANDED_SECONDS.values())} END)"
    # Queued: stranded once both its intake and its last dispatch are that long ago.
    latest = "GREATEST" if op.get_bind().dialect.name == "postgresql" else "MAX"
    queued_since = f"{latest}(created_at, COALESCE(dispatched_at, created_at))"
    op.execute(
        f"UPDATE bot_request SET lease_token = '{INHERITED}', "
        f"lease_expires_at = {_plus_seconds(queued_since, stranded)} WHERE status = 'queued'"
    )
    op.execute(
        f"UPDATE bot_request SET lease_token = '{INHERITED}', lease_owner = worker, "
        f"lease_expires_at = {_plus_seconds('started_at', stranded)} WHERE status = 'running'"
    )
    # A delivery some process holds now (its lease is its next_delivery_at, in the future).
    op.execute(
        f"UPDATE bot_request SET delivery_token = '{INHERITED}' "
        "WHERE delivery_status IN ('pending', 'retrying') AND next_delivery_at IS NOT NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table("bot_request") as batch:
        batch.drop_column("delivery_token")
        batch.drop_column("lease_token")
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_owner")
    with op.batch_alter_table("transcription_job") as batch:
        batch.add_column(sa.Column("dispatch_token", AutoString(length=32), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE transcription_job SET dispatch_token = lease_token")
    with op.batch_alter_table("transcription_job") as batch:
        batch.drop_column("lease_token")
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_owner")
    with op.batch_alter_table("video") as batch:
        batch.drop_column("lease_token")
