"""Request and response bodies of the transcription API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from api.callbacks import CALLBACK_URL_FIELD, CallbackUrl, CallbackView
from tasks.asr import RequestOptions


class TranscriptionOptions(RequestOptions):
    """Per-job recognition options; anything left out uses Relay's settings."""


class UploadFields(TranscriptionOptions):
    """The fields of a multipart upload besides its file."""

    callback_url: CallbackUrl | None = CALLBACK_URL_FIELD


class PathSubmission(UploadFields):
    """A file the workers can already read, inside one of the allowed source folders."""

    path: str = Field(min_length=1, max_length=4096)


class Accepted(BaseModel):
    job_id: str
    status: str
    estimated_seconds: float
    duration_seconds: float
    flow_run_id: str | None
    task_run_id: str | None = None


class ChunkCounts(BaseModel):
    total: int
    done: int
    failed: int


class JobStatusView(BaseModel):
    job_id: str
    status: str
    file_name: str
    progress_percent: float
    audio_seconds_done: float
    chunks: ChunkCounts
    duration_seconds: float | None
    language: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    eta_seconds: float | None
    error: str | None
    notification_error: str | None
    flow_run_id: str | None
    flow_run_url: str | None
    work_pool: str | None
    callback: CallbackView | None = None


class JobPage(BaseModel):
    items: list[JobStatusView]
    next_cursor: str | None


class Deleted(BaseModel):
    job_id: str
    status: str
