"""Job store tables."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Annotated, overload

from pydantic import AfterValidator
from sqlalchemy import DateTime, Index, String, Table, Text, UniqueConstraint, inspect
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


@overload
def as_utc(moment: datetime) -> datetime: ...
@overload
def as_utc(moment: None) -> None: ...
def as_utc(moment: datetime | None) -> datetime | None:
    """The moment with its zone: SQLite hands datetimes back naive, and Relay stores UTC."""
    if moment is None or moment.tzinfo:
        return moment
    return moment.replace(tzinfo=UTC)


# A datetime that always leaves Relay as RFC 3339 with its zone (API bodies, callbacks).
UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]


def new_id() -> str:
    return uuid.uuid4().hex


def table_of(model: type[SQLModel]) -> Table:
    """The Core table behind a model, for what SQLModel cannot say (upserts, bulk inserts)."""
    table = inspect(model).local_table
    if not isinstance(table, Table):
        raise TypeError(f"{model.__name__} is not mapped to one table")
    return table


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ChunkStatus(StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class TranscriptionJob(SQLModel, table=True):
    """One file to transcribe, from submission to transcript."""

    __tablename__ = "transcription_job"
    __table_args__ = (Index("ix_transcription_job_created", "created_at", "id"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    source_name: str = Field(max_length=512)
    source_path: str = Field(max_length=4096)
    status: JobStatus = Field(default=JobStatus.QUEUED, sa_type=String(16), index=True)
    error: str | None = None
    duration_seconds: float | None = None
    language: str | None = Field(default=None, max_length=16)
    model: str | None = Field(default=None, max_length=512)
    chunks_total: int = 0
    chunks_done: int = 0
    chunks_failed: int = 0
    audio_seconds_done: float = 0.0
    # What an earlier attempt had transcribed: a job run again from the start (taken over)
    # shows at least this, never its progress going back (store/status.progress_percent).
    progress_floor_seconds: float = Field(default=0.0, sa_column_kwargs={"server_default": "0"})
    output_dir: str | None = Field(default=None, max_length=4096)
    flow_run_id: str | None = Field(default=None, max_length=64)
    work_pool: str | None = Field(default=None, max_length=128)
    notification_error: str | None = None
    # Submitted to a warm task worker: the job's options (JSON), kept to run it again, and
    # its lease (store/leases.py): the token is given to the task run dispatched with it
    # (only that run may run the job); expiry is set once a worker coordinates it.
    options: str | None = None
    lease_owner: str | None = Field(default=None, max_length=255)
    lease_expires_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    lease_token: str | None = Field(default=None, max_length=32)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    started_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    finished_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class TranscriptionChunk(SQLModel, table=True):
    """One piece of a job's audio; ends done or failed with a reason, never lost."""

    __tablename__ = "transcription_chunk"
    __table_args__ = (UniqueConstraint("job_id", "index", name="uq_transcription_chunk_job_index"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(
        foreign_key="transcription_job.id", ondelete="CASCADE", index=True, max_length=32
    )
    index: int
    start_seconds: float
    end_seconds: float
    status: ChunkStatus = Field(default=ChunkStatus.PENDING, sa_type=String(16))
    error: str | None = None
    asr_seconds: float | None = None
    worker_pid: int | None = None
    worker_host: str | None = Field(default=None, max_length=255)  # its Dask worker's host
    segments: int | None = None
    seconds_done: float = 0.0  # decoded so far, reported by the worker as segments come out


class VideoStatus(StrEnum):
    PENDING = "pending"
    CLAIMED = "claimed"
    DONE = "done"
    FAILED = "failed"


class BatchStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"  # every video of the batch ended done or failed
    INCOMPLETE = "incomplete"  # the workers stopped with videos left (they wait for the next)
    CANCELLED = "cancelled"


class AttemptOutcome(StrEnum):
    """How one worker's attempt at a video ended."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"  # for good
    RETRY = "retry"  # failed; the video waits for another attempt
    LOST = "lost"  # the lease ran out (or was taken over) before a result was recorded
    RELEASED = "released"  # handed back unfinished (shutdown, cancellation)


class Video(SQLModel, table=True):
    """One catalogue entry of the batch reprocessing: claimed under a lease, done once."""

    __tablename__ = "video"
    __table_args__ = (Index("ix_video_claimable", "batch_id", "status"),)

    id: int | None = Field(default=None, primary_key=True)
    # sha256 of the source: a unique index on the source itself would exceed B-tree limits.
    source_key: str = Field(max_length=64, unique=True)
    source: str = Field(max_length=4096)
    name: str = Field(max_length=512)
    duration_seconds: float | None = None
    status: VideoStatus = Field(default=VideoStatus.PENDING, sa_type=String(16), index=True)
    attempts: int = 0
    batch_id: str | None = Field(default=None, max_length=32)
    lease_owner: str | None = Field(default=None, max_length=255)
    lease_expires_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    lease_token: str | None = Field(default=None, max_length=32)
    result_path: str | None = Field(default=None, max_length=4096)
    language: str | None = Field(default=None, max_length=16)
    error: str | None = None
    imported_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    finished_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class VideoBatch(SQLModel, table=True):
    """One run of the reprocessing flow over the videos waiting when it started."""

    __tablename__ = "video_batch"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    status: BatchStatus = Field(default=BatchStatus.RUNNING, sa_type=String(16), index=True)
    workers_requested: int = 0
    videos_total: int = 0
    flow_run_id: str | None = Field(default=None, max_length=64)
    note: str | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    finished_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class VideoAttempt(SQLModel, table=True):
    """The processing log: one row each time a worker starts on a video, and how it ended."""

    __tablename__ = "video_attempt"

    id: int | None = Field(default=None, primary_key=True)
    video_id: int = Field(foreign_key="video.id", ondelete="CASCADE", index=True)
    batch_id: str | None = Field(default=None, max_length=32, index=True)
    worker: str = Field(max_length=255)
    outcome: AttemptOutcome = Field(default=AttemptOutcome.RUNNING, sa_type=String(16))
    error: str | None = None
    started_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    finished_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    seconds: float | None = None


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
