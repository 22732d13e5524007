"""Tables every workload shares: idempotent POSTs, callbacks and worker heartbeats."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import DateTime, Index, String, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from store.models.base import new_id, utcnow


class IdempotentRequest(SQLModel, table=True):
    """A POST sent with an ``Idempotency-Key``: what it asked, and the answer it got, so a
    retry with the same key gets the same answer and creates nothing new."""

    __tablename__ = "idempotent_request"

    operation: str = Field(primary_key=True, max_length=64)
    key: str = Field(primary_key=True, max_length=255)
    fingerprint: str = Field(max_length=64)  # sha256 of what the request asked for
    # Set once the answer exists; until then the first request is still being handled.
    status_code: int | None = None
    response_body: str | None = Field(default=None, sa_type=Text)
    retry_after: str | None = Field(default=None, max_length=16)
    started_at: datetime = Field(sa_type=DateTime(timezone=True), index=True)


class CallbackSubject(StrEnum):
    """What a callback reports on: the kind of unit of work whose end it announces."""

    TRANSCRIPTION = "transcription"
    BOT_REQUEST = "bot_request"


class CallbackKind(StrEnum):
    """How a job's end is told: a signed POST to the client's ``callback_url``, or the
    follow-up of the Discord interaction (``/transcribe``) the job came from."""

    WEBHOOK = "webhook"
    DISCORD = "discord"


class CallbackStatus(StrEnum):
    WAITING = "waiting"  # its job has not ended yet
    PENDING = "pending"  # its job ended: due now, not tried yet
    RETRYING = "retrying"  # tried and not taken; due again at lease_expires_at
    DELIVERED = "delivered"  # the receiver answered 2xx: never sent again
    FAILED = "failed"  # given up (attempts spent, refused, or an answer retrying cannot fix)


class Callback(SQLModel, table=True):
    """A completion callback: one signed POST to a client's URL when its job ends, a unit
    of work under a lease (store/leases.py) like the job it reports on."""

    __tablename__ = "callback"
    __table_args__ = (
        UniqueConstraint("subject", "subject_id", name="uq_callback_subject"),
        Index("ix_callback_due", "status", "lease_expires_at"),
    )

    # Also the webhook-id (``msg_<id>``): the same on every retry, for de-duplication.
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    subject: CallbackSubject = Field(sa_type=String(16))
    subject_id: str = Field(max_length=32)
    kind: CallbackKind = Field(default=CallbackKind.WEBHOOK, sa_type=String(16))
    # The URL may carry a token in its path or query: sealed like webhook URLs, and shown
    # redacted (scheme, host and path, no query).
    url_sealed: str
    url_shown: str = Field(max_length=512)
    status: CallbackStatus = Field(default=CallbackStatus.WAITING, sa_type=String(16))
    event: str | None = Field(default=None, max_length=64)  # transcription.completed, ...
    attempts: int = 0
    last_error: str | None = None
    # Its lease: held by the process posting it; once an attempt failed, held by nobody
    # and its expiry is when the next attempt is due.
    lease_owner: str | None = Field(default=None, max_length=255)
    lease_expires_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    lease_token: str | None = Field(default=None, max_length=32)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    ended_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    delivered_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class WorkerHeartbeat(SQLModel, table=True):
    """A long-lived worker process that says it is alive (store/workers.py): one row per
    process, upserted at each heartbeat, removed when it exits cleanly."""

    __tablename__ = "worker_heartbeat"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    kind: str = Field(sa_type=String(32))  # a store.workers.WorkerKind
    pool: str = Field(max_length=64)
    host: str = Field(max_length=255)
    pid: int
    heartbeat_seconds: float  # the interval it beats at: stale after 3 of them
    in_flight: int = 0
    # Both by the database's clock, like leases: hosts' clocks drift.
    started_at: datetime = Field(sa_type=DateTime(timezone=True))
    last_seen_at: datetime = Field(sa_type=DateTime(timezone=True), index=True)
