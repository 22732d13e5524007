"""What a completion callback says: the event, and the job's status as its ``GET`` shows it
once the job has ended (the fields that stay true after the end; progress and ETA do not).
The API describes these models in its OpenAPI ``callbacks``."""

from __future__ import annotations

import json

from pydantic import BaseModel, Field

from relay_settings import get_settings
from store import bot as requests
from store import jobs
from store.models import BotRequest, Callback, CallbackSubject, TranscriptionJob, UtcDatetime


class ChunkTotals(BaseModel):
    total: int
    done: int
    failed: int


class TranscriptionEnded(BaseModel):
    """A transcription job at its end: the fields of ``GET /api/transcriptions/{id}``."""

    job_id: str
    status: str = Field(description="completed, failed or cancelled")
    file_name: str
    chunks: ChunkTotals
    duration_seconds: float | None
    language: str | None
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    error: str | None
    flow_run_id: str | None
    work_pool: str | None
    status_url: str = Field(description="where the job's status (and transcript) is read")


class BotRequestEnded(BaseModel):
    """A bot request at its end: the fields of ``GET /api/bot/requests/{id}``."""

    request_id: str
    kind: str
    status: str = Field(description="completed, failed or refused")
    route: str
    pool: str
    provider: str | None
    model: str | None
    answer_text: str | None
    error: str | None
    retry_at: UtcDatetime | None
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    status_url: str


class CallbackEvent(BaseModel):
    """The body of a completion callback (Standard Webhooks' ``type``/``timestamp``/
    ``data``)."""

    type: str = Field(
        description="transcription.completed | .failed | .cancelled, "
        "bot_request.completed | .failed | .refused"
    )
    timestamp: UtcDatetime = Field(description="when the job ended")
    data: TranscriptionEnded | BotRequestEnded


def event_of(callback: Callback) -> CallbackEvent | None:
    """The callback's event, from the job as it is stored now; None when the job is gone."""
    data: TranscriptionEnded | BotRequestEnded | None = None
    if callback.subject == CallbackSubject.TRANSCRIPTION:
        if job := jobs.get_job(callback.subject_id):
            data = transcription_ended(job)
    elif request := requests.get_request(callback.subject_id):
        data = bot_request_ended(request)
    if data is None or callback.event is None:
        return None
    ended = callback.ended_at or data.finished_at or data.created_at
    return CallbackEvent(type=callback.event, timestamp=ended, data=data)


def body_of(event: CallbackEvent) -> bytes:
    """The exact bytes posted and signed (compact JSON)."""
    return json.dumps(event.model_dump(mode="json"), separators=(",", ":")).encode()


def transcription_ended(job: TranscriptionJob) -> TranscriptionEnded:
    """The job's end, as its GET shows it."""
    return TranscriptionEnded(
        job_id=job.id,
        status=job.status,
        file_name=job.source_name,
        chunks=ChunkTotals(total=job.chunks_total, done=job.chunks_done, failed=job.chunks_failed),
        duration_seconds=job.duration_seconds,
        language=job.language,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        error=job.error,
        flow_run_id=job.flow_run_id,
        work_pool=job.work_pool,
        status_url=_link(f"/api/transcriptions/{job.id}"),
    )


def bot_request_ended(request: BotRequest) -> BotRequestEnded:
    """The request's end, as its GET shows it."""
    return BotRequestEnded(
        request_id=request.id,
        kind=request.kind,
        status=request.status,
        route=request.route,
        pool=request.pool,
        provider=request.provider,
        model=request.model,
        answer_text=request.answer_text,
        error=request.error,
        retry_at=request.retry_at,
        created_at=request.created_at,
        started_at=request.started_at,
        finished_at=request.finished_at,
        status_url=_link(f"/api/bot/requests/{request.id}"),
    )


def _link(path: str) -> str:
    """An absolute link with ``RELAY_PUBLIC_URL``, else the path."""
    return get_settings().public_url.rstrip("/") + path
