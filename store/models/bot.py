"""The bot's tables: its requests, usage counters, cooldowns and resting API keys."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum

from sqlalchemy import DateTime, Index, String
from sqlmodel import Field, SQLModel

from store.models.base import new_id, utcnow


class BotRequestStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    REFUSED = "refused"  # over a user / daily limit: never reached a provider


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    RETRYING = "retrying"  # Discord did not take it yet; the bot workers try again
    FAILED = "failed"  # given up after every retry; the reason is recorded


class FollowUp(StrEnum):
    """Where an interaction's answer stands with its token, which Discord keeps 15 minutes."""

    LIVE = "live"  # answered on the interaction's webhook; the expiry notice not sent yet
    NOTICED = "noticed"  # its "thinking…" message now says where a late answer goes
    NOTICE_FAILED = "notice_failed"  # Discord refused the notice (not its token): no notice
    EXPIRED = "expired"  # the token is dead: the answer goes to the route's fallback block
    CLOSED = "closed"  # answered (or given up) while the token lived: nothing left to do


class BotRequest(SQLModel, table=True):
    """One Discord bot request, from intake to the answer posted back."""

    __tablename__ = "bot_request"
    __table_args__ = (
        Index("ix_bot_request_delivery", "delivery_status", "next_delivery_at"),
        Index("ix_bot_request_status_created", "status", "created_at"),
        Index("ix_bot_request_status", "status"),  # the scrape's count by state (0009)
        Index("ix_bot_request_notice", "followup", "notice_due_at"),  # notices due (0010)
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    kind: str = Field(max_length=16)
    prompt: str
    user_id: str = Field(max_length=64)
    channel: str = Field(max_length=128)
    guild: str | None = Field(default=None, max_length=64)
    route: str = Field(max_length=128)
    pool: str = Field(max_length=64)
    status: BotRequestStatus = Field(default=BotRequestStatus.QUEUED, sa_type=String(16))
    # Where the answer goes: a destination block's name, or a webhook URL sealed with the
    # store's secret key (its token must not sit in the database in clear).
    destination_block: str | None = Field(default=None, max_length=128)
    destination_sealed: str | None = None
    destination_shown: str | None = Field(default=None, max_length=512)  # redacted
    provider: str | None = Field(default=None, max_length=32)
    model: str | None = Field(default=None, max_length=128)
    key_name: str | None = Field(default=None, max_length=64)
    upstream_calls: int = 0
    upstream_seconds: float | None = None
    answer_text: str | None = None
    answer_files: str | None = None  # JSON list of {name, size, mime_type}
    error: str | None = None
    retry_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    worker: str | None = Field(default=None, max_length=255)  # who answered (or is)
    # Its lease (store/leases.py): while queued, the dispatched task run's time to start;
    # while running, its worker's, renewed as it works.
    lease_owner: str | None = Field(default=None, max_length=255)
    lease_expires_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    lease_token: str | None = Field(default=None, max_length=32)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    dispatched_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    started_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    finished_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    delivery_status: DeliveryStatus = Field(default=DeliveryStatus.PENDING, sa_type=String(16))
    delivery_attempts: int = 0
    delivery_messages_sent: int = 0
    delivery_error: str | None = None
    # The delivery's lease: its expiry is also when a retry is due (held by nobody then).
    next_delivery_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    delivery_token: str | None = Field(default=None, max_length=32)
    delivered_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    # From a Discord interaction (0010): when, its follow-up, its notice (store/followups.py).
    interaction_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    followup: FollowUp | None = Field(default=None, sa_type=String(16))
    notice_due_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    notice_token: str | None = Field(default=None, max_length=32)


class UsageCounter(SQLModel, table=True):
    """Requests counted per scope (a user and kind, a kind, an API key) per UTC day."""

    __tablename__ = "usage_counter"

    scope: str = Field(primary_key=True, max_length=200)
    day: date = Field(primary_key=True)
    used: int = 0


class UserCooldown(SQLModel, table=True):
    """When a user's last admitted request of a kind was, for the per-user cooldown."""

    __tablename__ = "user_cooldown"

    user_id: str = Field(primary_key=True, max_length=64)
    kind: str = Field(primary_key=True, max_length=16)
    last_at: datetime = Field(sa_type=DateTime(timezone=True))


class ApiKeyState(SQLModel, table=True):
    """A provider key resting after a 429, a 5xx or a refusal of the key itself."""

    __tablename__ = "api_key_state"

    provider: str = Field(primary_key=True, max_length=32)
    key_name: str = Field(primary_key=True, max_length=64)
    cooled_until: datetime = Field(sa_type=DateTime(timezone=True))
    reason: str | None = Field(default=None, max_length=500)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
