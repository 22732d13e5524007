"""``/api/transcriptions``: submit a file, follow it, fetch its transcript, cancel or delete it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated

import fsspec
from fastapi import APIRouter, BackgroundTasks, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse, Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from api.auth import require_token
from api.callbacks import callback_routes, callback_view, checked_callback_url
from api.errors import ApiError
from api.schemas import (
    Accepted,
    ChunkCounts,
    Deleted,
    JobPage,
    JobStatusView,
    PathSubmission,
    TranscriptionOptions,
    UploadFields,
)
from api.submit import (
    cancel_flow_run,
    flow_run_url,
    submit_to_task_worker,
    submit_transcription,
)
from api.uploads import allowed_path, save_upload
from relay_settings import RelaySettings
from store import callbacks, jobs, status
from store.models import Callback, CallbackSubject, JobStatus, TranscriptionJob, new_id, utcnow
from tasks.asr import JobOptions
from tasks.callbacks import deliver_now
from tasks.media import AudioTooLongError, MediaError, probe

router = APIRouter(
    prefix="/api/transcriptions", tags=["transcriptions"], dependencies=[Depends(require_token)]
)

# Share of a job's progress that decoding and splitting stand for (about what they take of a
# job's time on CPU); transcription is the rest, as the workers decode the audio.
PREPARED_PERCENT = 3.0
_MEDIA_STATUS = {"too_long": 413, "not_media": 415, "no_audio": 415, "undecodable": 415}
_CONTENT_TYPES = {
    "txt": "text/plain",
    "srt": "application/x-subrip",
    "vtt": "text/vtt",
    "json": "application/json",
}


def _settings(request: Request) -> RelaySettings:
    settings: RelaySettings = request.app.state.settings  # set by create_app
    return settings


@router.post(
    "",
    status_code=202,
    response_model=Accepted,
    summary="Submit audio or video for transcription",
    description="Either a multipart upload (field `file`, plus optional option fields) or JSON "
    '`{"path": ...}` naming a file inside RELAY_SOURCE_ROOTS. The file is probed first: '
    "over-long audio gets 413, unreadable media 415 or 422.",
    responses={
        413: {"description": "audio or upload too long"},
        415: {"description": "not audio or video"},
        401: {},
        403: {},
        422: {},
    },
    callbacks=callback_routes("submit_transcription"),
)
async def submit(request: Request) -> Accepted:
    settings = _settings(request)
    job_id = new_id()
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        source, options, uploaded = await _from_upload(request, settings, job_id)
    elif kind.startswith("application/json"):
        source, options = await _from_json(request, settings)
        uploaded = False
    else:
        raise ApiError(
            415,
            "unsupported_content_type",
            "send multipart/form-data with a 'file' field or JSON with a 'path'",
        )
    try:
        callback_url = await checked_callback_url(settings, options.callback_url)
    except ApiError:
        if uploaded:
            shutil.rmtree(source.parent, ignore_errors=True)
        raise
    try:
        info = await run_in_threadpool(probe, source, settings.max_audio_seconds)
    except MediaError as err:
        if uploaded:
            shutil.rmtree(source.parent, ignore_errors=True)
        extra = {}
        if isinstance(err, AudioTooLongError):
            extra = {"duration_seconds": round(err.duration, 1), "max_seconds": err.limit}
        raise ApiError(_MEDIA_STATUS.get(err.code, 422), err.code, str(err), **extra) from err

    pool = settings.transcribe.deployment.split("/")[-1]
    ahead = await run_in_threadpool(status.waiting_audio_seconds)
    speed = await run_in_threadpool(status.throughput)
    chosen = JobOptions(
        **options.model_dump(include=set(TranscriptionOptions.model_fields), exclude_none=True)
    )
    token = new_id()  # only the task run given it may run the job
    await run_in_threadpool(
        jobs.create_job,
        str(source),
        source.name,
        job_id,
        pool,
        info.duration,
        chosen.model_dump_json(exclude_none=True),
        token,
        callback_url,
    )
    flow_run_id = task_run_id = None
    try:
        if settings.transcribe.via == "task-worker":
            task_run_id = await submit_to_task_worker(
                request, pool, job_id, str(source), chosen, token
            )
        else:
            queue = "short" if info.duration <= settings.short_audio_seconds else "long"
            flow_run_id = await submit_transcription(
                settings.transcribe.deployment,
                {"source": str(source), "job_id": job_id, **chosen.given()},
                queue,
            )
    except ApiError as err:
        # The client hears of it now: no callback for a job it was told was not accepted.
        await run_in_threadpool(callbacks.forget, CallbackSubject.TRANSCRIPTION, job_id)
        await run_in_threadpool(jobs.fail_job, job_id, err.message)
        raise
    if flow_run_id:
        await run_in_threadpool(jobs.set_flow_run, job_id, flow_run_id)
    return Accepted(
        job_id=job_id,
        status=JobStatus.QUEUED,
        estimated_seconds=round(speed.seconds_for(info.duration + ahead), 1),
        duration_seconds=round(info.duration, 2),
        flow_run_id=flow_run_id,
        task_run_id=task_run_id,
    )


async def _from_upload(
    request: Request, settings: RelaySettings, job_id: str
) -> tuple[Path, UploadFields, bool]:
    form = await request.form(max_files=1, max_fields=20)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise ApiError(422, "missing_file", "multipart body needs a 'file' field with the media")
    fields = {k: v for k, v in form.items() if k != "file" and isinstance(v, str) and v != ""}
    try:
        options = UploadFields.model_validate(fields)
    except ValidationError as err:
        raise ApiError(422, "invalid_options", _problems(err)) from err
    folder = Path(settings.data_dir) / "uploads" / job_id
    path = await run_in_threadpool(save_upload, upload, folder)
    await upload.close()
    return path, options, True


async def _from_json(request: Request, settings: RelaySettings) -> tuple[Path, PathSubmission]:
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {err}") from err
    try:
        submission = PathSubmission.model_validate(body)
    except ValidationError as err:
        raise ApiError(422, "invalid_request", _problems(err)) from err
    return allowed_path(submission.path, settings.allowed_source_roots()), submission


def _problems(err: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in err.errors())


def _job_or_404(job_id: str) -> TranscriptionJob:
    job = jobs.get_job(job_id)
    if job is None:
        raise ApiError(404, "not_found", f"no transcription job {job_id}")
    return job


def view(job: TranscriptionJob, callback: Callback | None = None) -> JobStatusView:
    """The job as clients see it: progress, ETA, links, and its callback's delivery."""
    duration = job.duration_seconds or 0.0
    if job.status == JobStatus.COMPLETED:
        progress = 100.0
    elif duration and job.chunks_total:  # decoded and split: the rest is transcription
        transcribed = min(job.audio_seconds_done / duration, 1.0)
        progress = min(99.9, PREPARED_PERCENT + (100.0 - PREPARED_PERCENT) * transcribed)
    else:
        progress = 0.0
    return JobStatusView(
        job_id=job.id,
        status=job.status,
        file_name=job.source_name,
        progress_percent=round(progress, 1),
        audio_seconds_done=round(min(job.audio_seconds_done, duration), 1),
        chunks=ChunkCounts(total=job.chunks_total, done=job.chunks_done, failed=job.chunks_failed),
        duration_seconds=job.duration_seconds,
        language=job.language,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        eta_seconds=_eta(job),
        error=job.error,
        notification_error=job.notification_error,
        flow_run_id=job.flow_run_id,
        flow_run_url=flow_run_url(job.flow_run_id),
        work_pool=job.work_pool,
        callback=callback_view(callback),
    )


def _eta(job: TranscriptionJob) -> float | None:
    """Seconds left: from this job's own pace once chunks finish, else measured throughput."""
    if job.status not in (JobStatus.QUEUED, JobStatus.RUNNING) or not job.duration_seconds:
        return None
    left = max(job.duration_seconds - job.audio_seconds_done, 0.0)
    if job.status == JobStatus.RUNNING and job.started_at and job.audio_seconds_done > 0:
        started = status._aware(job.started_at)
        pace = job.audio_seconds_done / max((utcnow() - started).total_seconds(), 0.001)
        return round(left / pace, 1)
    return round(status.recent_throughput().seconds_for(left), 1)


@router.get(
    "/{job_id}",
    response_model=JobStatusView,
    summary="Status, progress and ETA",
    responses={404: {}, 401: {}},
)
def read_job(job_id: str) -> JobStatusView:
    found = callbacks.job_and_callback(job_id)
    if found is None:
        raise ApiError(404, "not_found", f"no transcription job {job_id}")
    return view(*found)


@router.get("", response_model=JobPage, summary="List jobs, newest first", responses={401: {}})
def list_jobs(
    status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> JobPage:
    try:
        page, next_cursor = status.list_jobs(status_filter, limit, cursor)
    except ValueError as err:
        raise ApiError(422, "invalid_cursor", str(err)) from err
    called = callbacks.of(CallbackSubject.TRANSCRIPTION, (job.id for job in page))
    return JobPage(items=[view(job, called.get(job.id)) for job in page], next_cursor=next_cursor)


@router.get(
    "/{job_id}/transcript",
    summary="The transcript as txt, srt, vtt or json",
    responses={200: {"content": {t: {} for t in _CONTENT_TYPES.values()}}, 404: {}, 409: {}},
    response_class=PlainTextResponse,
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
    if job.output_dir is None:  # a completed job has one; gone means nothing to read
        raise ApiError(
            410, "transcript_missing", f"the transcript files of job {job_id} are no longer stored"
        )
    path = f"{job.output_dir.rstrip('/')}/transcript.{format}"
    try:
        with fsspec.open(path, "r", encoding="utf-8") as handle:
            content = handle.read()
    except FileNotFoundError as err:
        raise ApiError(
            410, "transcript_missing", f"the transcript files of job {job_id} are no longer stored"
        ) from err
    return Response(content, media_type=f"{_CONTENT_TYPES[format]}; charset=utf-8")


@router.delete(
    "/{job_id}",
    response_model=Deleted,
    summary="Cancel a job, or delete a finished one",
    responses={404: {}, 401: {}},
)
async def delete(job_id: str, request: Request, background: BackgroundTasks) -> Deleted:
    job = await run_in_threadpool(_job_or_404, job_id)
    if job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
        if await run_in_threadpool(jobs.cancel_job, job_id):
            # Its run may never start to say so (a queued flow run): announce it from here.
            background.add_task(deliver_now, CallbackSubject.TRANSCRIPTION, job_id)
            if job.flow_run_id:
                await cancel_flow_run(job.flow_run_id)
            return Deleted(job_id=job_id, status=JobStatus.CANCELLED)
        job = await run_in_threadpool(_job_or_404, job_id)  # it finished meanwhile
    data = Path(_settings(request).data_dir)
    await run_in_threadpool(jobs.delete_job, job_id)
    for folder in (data / "jobs" / job_id, data / "uploads" / job_id):
        shutil.rmtree(folder, ignore_errors=True)
    return Deleted(job_id=job_id, status="deleted")
