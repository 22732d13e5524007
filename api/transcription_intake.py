"""Accepting a transcription: its media checked (the whole audio track decoded), the job
recorded and handed to Prefect. Shared by ``POST /api/transcriptions`` and ``/transcribe``
from Discord (api/interaction_transcribe.py)."""

from __future__ import annotations

import shutil

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from api.callbacks import checked_callback_url
from api.errors import ApiError
from api.schemas import Accepted, TranscriptionOptions
from api.submit import submit_to_task_worker, submit_transcription
from api.uploads import Submission
from relay_settings import RelaySettings
from store import callbacks, jobs, status
from store.models import CallbackKind, CallbackSubject, JobStatus, new_id
from tasks import metrics
from tasks.asr import JobOptions
from tasks.media import AudioTooLongError, MediaError, MediaProblem
from tasks.media_check import check

# Over-long audio is 413 and a file that is not media at all 415; media Relay cannot use
# (empty, no audio track, truncated, corrupt, a length it cannot tell) is 422.
MEDIA_STATUS = {MediaProblem.TOO_LONG: 413, MediaProblem.NOT_MEDIA: 415}


async def accept(
    request: Request,
    settings: RelaySettings,
    job_id: str,
    submission: Submission,
    *,
    follow_up: str | None = None,
) -> Accepted:
    """Check the media, record the job and hand it to Prefect; ApiError 413, 415 or 422
    (the media), 422 (the callback URL), 503 (Prefect). A refused upload is removed. With
    ``follow_up`` (the webhook URL of the Discord interaction the file came from) the job's
    end is told there instead of to a ``callback_url``."""
    source, options, uploaded = submission.source, submission.options, submission.uploaded
    kind = CallbackKind.DISCORD if follow_up else CallbackKind.WEBHOOK
    callback_url = follow_up or await checked_callback_url(settings, options.callback_url)
    try:  # decodes the whole audio track: off the event loop
        info = await run_in_threadpool(check, source, settings.max_audio_seconds)
    except Exception as err:
        if uploaded:  # a refused file is not kept, whatever refused it
            await run_in_threadpool(shutil.rmtree, source.parent, ignore_errors=True)
        if not isinstance(err, MediaError):
            raise
        extra = {}
        if isinstance(err, AudioTooLongError):
            extra = {"duration_seconds": round(err.duration, 1), "max_seconds": err.limit}
        raise ApiError(MEDIA_STATUS.get(err.code, 422), err.code, str(err), **extra) from err

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
        kind,
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
        if await run_in_threadpool(jobs.fail_job, job_id, err.message):
            metrics.transcription_ended(pool, metrics.TranscriptionOutcome.FAILED)
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
