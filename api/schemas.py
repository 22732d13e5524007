"""Request and response bodies of the transcription API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from api.callbacks import CALLBACK_URL_FIELD, CallbackUrl, CallbackView
from tasks.asr import RequestOptions

# What str.strip() removes (str.isspace), spelled out: ECMA's \s (the OpenAPI reader's) and
# Python's differ, so the documented pattern and the check use this one class.
_SPACE = r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# PostgreSQL stores no NUL in text: a string field refuses it at the door.
NO_NUL = r"^[^\x00]*$"
NOT_BLANK = rf"^[^\x00]*[^\x00{_SPACE}][^\x00]*$"


def _utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every one Relay stores is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# A datetime that always reaches the client as RFC 3339 with its zone.
UtcDatetime = Annotated[datetime, AfterValidator(_utc)]


class TranscriptionOptions(RequestOptions):
    """Per-job recognition options; anything left out uses Relay's settings."""

    model_config = ConfigDict(extra="forbid")  # a misspelt option is an error, not ignored


class UploadFields(TranscriptionOptions):
    """The fields of a multipart upload besides its file."""

    callback_url: CallbackUrl | None = CALLBACK_URL_FIELD


class PathSubmission(UploadFields):
    """A file the workers can already read, inside one of the allowed source folders."""

    path: str = Field(
        min_length=1,
        max_length=4096,
        pattern=r"^/[^\x00]*$",
        description="an absolute path on the workers",
    )


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
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
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
