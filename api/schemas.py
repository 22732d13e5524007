"""Request and response bodies of the transcription API."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from api.callbacks import CALLBACK_URL_FIELD, CallbackUrl, CallbackView
from tasks.asr import RequestOptions
from tasks.callback_events import TranscriptionEnded

# What str.strip() removes (str.isspace), spelled out: ECMA's \s (the OpenAPI reader's) and
# Python's differ, so the documented pattern and the check use this one class.
_SPACE = r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# PostgreSQL stores no NUL in text: a string field refuses it at the door.
NO_NUL = r"^[^\x00]*$"
NOT_BLANK = rf"^[^\x00]*[^\x00{_SPACE}][^\x00]*$"


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


class JobStatusView(TranscriptionEnded):
    """The job as its GET shows it: what its completion callback says, and its progress."""

    status: str = Field(description="queued, running, completed, failed or cancelled")
    progress_percent: float
    audio_seconds_done: float
    eta_seconds: float | None
    notification_error: str | None
    flow_run_url: str | None
    callback: CallbackView | None = None


class JobPage(BaseModel):
    items: list[JobStatusView]
    next_cursor: str | None


class Deleted(BaseModel):
    job_id: str
    status: str
