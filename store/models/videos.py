"""The batch reprocessing tables: videos, their batches, each attempt at one."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import DateTime, Index, String
from sqlmodel import Field, SQLModel

from store.models.base import new_id, utcnow


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
