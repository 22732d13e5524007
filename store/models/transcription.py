"""The transcription job and its chunks."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import DateTime, Index, String, UniqueConstraint
from sqlmodel import Field, SQLModel

from store.models.base import new_id, utcnow


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
