"""``/api/transcriptions``: submit a file, follow it, fetch its transcript, cancel or delete it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import fsspec
from fastapi import APIRouter, BackgroundTasks, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from api import reads
from api.auth import require_token
from api.callbacks import callback_routes, callback_view
from api.contract import upload_request_body
from api.errors import ApiError, error_responses
from api.idempotency import IdempotencyKey, KeyedRequest
from api.schemas import (
    Accepted,
    Deleted,
    JobPage,
    JobStatusView,
)
from api.submit import (
    cancel_flow_run,
    flow_run_url,
)
from api.transcription_intake import accept
from api.uploads import read_submission
from relay_settings import RelaySettings
from store import callbacks, jobs, status
from store.models import (
    Callback,
    CallbackSubject,
    JobStatus,
    TranscriptionJob,
    as_utc,
    new_id,
    utcnow,
)
from tasks import metrics
from tasks.callback_events import transcription_ended
from tasks.callbacks import deliver_now

router = APIRouter(
    prefix="/api/transcriptions", tags=["transcriptions"], dependencies=[Depends(require_token)]
)

PREPARED_PERCENT = status.PREPARED_PERCENT  # kept here for the readers that import it
_CONTENT_TYPES = {
    "txt": "text/plain",
    "srt": "application/x-subrip",
    "vtt": "text/vtt",
    "json": "application/json",
}


# Where a created job can be followed: OpenAPI links from the 202 to the operations on it.
_JOB_LINKS = {
    name: {"operationId": operation, "parameters": {"job_id": "$response.body#/job_id"}}
    for name, operation in (
        ("status", "getTranscription"),
        ("transcript", "getTranscript"),
        ("cancel", "cancelTranscription"),
        ("delete", "deleteTranscription"),
    )
}
# A job id or a cursor: what store.status hands out.
CURSOR_PATTERN = r"^[0-9]{1,16}\.[A-Za-z0-9_-]{1,64}$"


def _settings(request: Request) -> RelaySettings:
    settings: RelaySettings = request.app.state.settings  # set by create_app
    return settings


@router.post(
    "",
    status_code=202,
    response_model=Accepted,
    operation_id="submitTranscription",
    callbacks=callback_routes("submit_transcription"),
    summary="Submit audio or video for transcription",
    description="Either a multipart upload (field `file`, plus optional option fields) or JSON "
    '`{"path": ...}` naming a file inside RELAY_SOURCE_ROOTS. Its whole audio track is decoded '
    "before a job is made: over-long audio gets 413, a file that is not media 415, media that "
    "cannot be used 422; a refused upload is not kept.",
    openapi_extra=upload_request_body(),
    responses={
        202: {"links": _JOB_LINKS},
        **error_responses(
            400,
            401,
            403,
            409,
            413,
            415,
            422,
            503,
            _403="the path is outside RELAY_SOURCE_ROOTS",
            _409="a request with the same Idempotency-Key is still being handled",
            _413="audio over RELAY_MAX_AUDIO_SECONDS (`too_long`), or upload over "
            "RELAY_MAX_UPLOAD_BYTES (`upload_too_large`)",
            _415="not audio or video at all: text, an unknown container (`not_media`); or a "
            "body neither multipart nor JSON",
            _422="media that cannot be transcribed: `empty`, `no_audio` (no audio track), "
            "`truncated` or `undecodable` (its audio does not decode to its end, or far from "
            "the length it declares); invalid options or path; an Idempotency-Key used for a "
            "different request",
            _503="the job could not be handed to Prefect",
        ),
    },
)
async def submit(request: Request, idempotency_key: IdempotencyKey = None) -> JSONResponse:
    settings = _settings(request)
    job_id = new_id()
    submission = await read_submission(request, settings, job_id)
    keyed = KeyedRequest("submitTranscription", idempotency_key)
    try:
        replay = await keyed.start(submission.fingerprint)
    except ApiError:
        submission.discard()
        raise
    if replay is not None:  # a retry: the first request's answer, nothing new created
        submission.discard()
        return replay
    try:
        accepted = await accept(request, settings, job_id, submission)
    except BaseException:
        await keyed.release()
        raise
    return await keyed.answer(JSONResponse(accepted.model_dump(mode="json"), status_code=202))


def _job_or_404(job_id: str) -> TranscriptionJob:
    job = jobs.get_job(job_id)
    if job is None:
        raise ApiError(404, "not_found", f"no transcription job {job_id}")
    return job


def view(job: TranscriptionJob, callback: Callback | None = None) -> JobStatusView:
    """The job as clients see it: progress, ETA, links, and its callback's delivery."""
    duration = job.duration_seconds or 0.0
    return JobStatusView(
        **dict(transcription_ended(job)),
        progress_percent=round(status.progress_percent(job), 1),
        audio_seconds_done=round(min(job.audio_seconds_done, duration), 1),
        eta_seconds=_eta(job),
        notification_error=job.notification_error,
        flow_run_url=flow_run_url(job.flow_run_id),
        callback=callback_view(callback),
    )


def _eta(job: TranscriptionJob) -> float | None:
    """Seconds left: from this job's own pace once chunks finish, else measured throughput."""
    if job.status not in (JobStatus.QUEUED, JobStatus.RUNNING) or not job.duration_seconds:
        return None
    left = max(job.duration_seconds - job.audio_seconds_done, 0.0)
    if job.status == JobStatus.RUNNING and job.started_at and job.audio_seconds_done > 0:
        started = as_utc(job.started_at)
        pace = job.audio_seconds_done / max((utcnow() - started).total_seconds(), 0.001)
        return round(left / pace, 1)
    return round(status.recent_throughput().seconds_for(left), 1)


@router.get(
    "/{job_id}",
    response_model=JobStatusView,
    operation_id="getTranscription",
    summary="Status, progress and ETA",
    responses=error_responses(401, 404, _404="no job with this id"),
)
async def read_job(job_id: str) -> JobStatusView:
    found = await reads.read(_job_view, job_id)
    if found is None:
        raise ApiError(404, "not_found", f"no transcription job {job_id}")
    return found


def _job_view(job_id: str) -> JobStatusView | None:
    """The whole read in the worker thread: the view's ETA may query the store (every 2 s),
    and a query on the event loop stalls every request in flight."""
    found = callbacks.job_and_callback(job_id)
    return view(*found) if found is not None else None


@router.get(
    "",
    response_model=JobPage,
    operation_id="listTranscriptions",
    summary="List jobs, newest first",
    responses=error_responses(401, 422),
)
def list_jobs(
    status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None,
        Query(pattern=CURSOR_PATTERN, description="next_cursor of the previous page"),
    ] = None,
) -> JobPage:
    page, next_cursor = status.list_jobs(status_filter, limit, cursor)
    called = callbacks.of(CallbackSubject.TRANSCRIPTION, (job.id for job in page))
    return JobPage(items=[view(job, called.get(job.id)) for job in page], next_cursor=next_cursor)


@router.get(
    "/{job_id}/transcript",
    operation_id="getTranscript",
    summary="The transcript as txt, srt, vtt or json",
    responses={
        200: {
            "content": {
                kind: {"schema": {"type": "object" if kind == "application/json" else "string"}}
                for kind in _CONTENT_TYPES.values()
            }
        },
        **error_responses(
            401,
            404,
            409,
            410,
            422,
            _409="the job has not completed",
            _410="the transcript files were removed",
        ),
    },
)
def read_transcript(
    job_id: str, format: Annotated[str, Query(pattern="^(txt|srt|vtt|json)$")] = "txt"
) -> Response:
    job = _job_or_404(job_id)
    if job.status != JobStatus.COMPLETED:
        raise ApiError(
            409,
            "not_finished",
            f"job {job_id} is {job.status}; the transcript exists once it is completed",
            status=job.status,
        )
    path = transcript_path(job, format)
    if path is None:  # a completed job has one; gone means nothing to read
        raise ApiError(
            410, "transcript_missing", f"the transcript files of job {job_id} are no longer stored"
        )
    try:
        with fsspec.open(path, "r", encoding="utf-8") as handle:
            content = handle.read()
    except FileNotFoundError as err:
        raise ApiError(
            410, "transcript_missing", f"the transcript files of job {job_id} are no longer stored"
        ) from err
    return Response(content, media_type=f"{_CONTENT_TYPES[format]}; charset=utf-8")


def transcript_path(job: TranscriptionJob, format: str = "txt") -> str | None:
    """Where the job's transcript in ``format`` is stored (a path or fsspec URL); None when
    the job has no output folder (not started, or its files were removed)."""
    if job.output_dir is None:
        return None
    return f"{job.output_dir.rstrip('/')}/transcript.{format}"


@router.post(
    "/{job_id}/cancel",
    response_model=JobStatusView,
    operation_id="cancelTranscription",
    summary="Cancel a queued or running job (its flow run too); the job is kept",
    responses=error_responses(401, 404, 409, _409="the job has already completed or failed"),
)
async def cancel(job_id: str, background: BackgroundTasks) -> JobStatusView:
    job = await run_in_threadpool(_job_or_404, job_id)
    if job.status != JobStatus.CANCELLED and not await _cancel(job, background):
        job = await run_in_threadpool(_job_or_404, job_id)  # it finished meanwhile
        raise ApiError(409, "already_finished", f"job {job_id} has already {job.status}")
    return view(await run_in_threadpool(_job_or_404, job_id))


@router.delete(
    "/{job_id}",
    response_model=Deleted,
    operation_id="deleteTranscription",
    summary="Delete a job with its files, cancelling it first if it has not finished",
    responses=error_responses(401, 404),
)
async def delete(job_id: str, request: Request) -> Deleted:
    job = await run_in_threadpool(_job_or_404, job_id)
    await _cancel(job)  # deleting it removes its callback too: no one is told
    data = Path(_settings(request).data_dir)
    if not await run_in_threadpool(jobs.delete_job, job_id):
        raise ApiError(404, "not_found", f"no transcription job {job_id}")
    for folder in (data / "jobs" / job_id, data / "uploads" / job_id):
        shutil.rmtree(folder, ignore_errors=True)
    return Deleted(job_id=job_id, status="deleted")


async def _cancel(job: TranscriptionJob, background: BackgroundTasks | None = None) -> bool:
    """Cancel the job and its flow run if it is queued or running; whether it was. With
    ``background``, its callback is announced from here (a queued run may never start)."""
    if job.status not in (JobStatus.QUEUED, JobStatus.RUNNING):
        return False
    if not await run_in_threadpool(jobs.cancel_job, job.id):
        return False
    metrics.transcription_ended(job.work_pool, metrics.TranscriptionOutcome.CANCELLED)
    if background is not None:
        background.add_task(deliver_now, CallbackSubject.TRANSCRIPTION, job.id)
    if job.flow_run_id:
        await cancel_flow_run(job.flow_run_id)
    return True
