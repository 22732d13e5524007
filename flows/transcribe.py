"""Transcription: probe -> split on silence -> transcribe chunks on Dask -> merge -> store."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Literal, cast

import fsspec
from prefect import flow, runtime
from prefect.artifacts import create_markdown_artifact
from prefect.states import Cancelled, Failed, State

from flows.chunks import transcribe_chunks
from flows.runtime import chunk_task_runner, cluster_threads
from relay_settings import get_settings
from store import jobs
from store.leases import process_owner, renewal_interval, renewing
from store.models import CallbackSubject, JobStatus
from tasks import metrics
from tasks.asr import AsrOptions, JobOptions
from tasks.callbacks import deliver_now
from tasks.discord_webhook import DeliveryOutcome
from tasks.formats import store_transcript
from tasks.interaction_progress import progress_edits
from tasks.media import MediaInfo, probe_media
from tasks.merge import merge
from tasks.notify import JobEvent, notify_job
from tasks.split import SplitOptions, SplitPlan, planned_count


@dataclass(frozen=True)
class TranscriptionOutcome:
    """What a finished transcription returns: where the files are and the text."""

    job_id: str
    text: str
    language: str | None
    duration: float
    files: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)


# Prefect calls state hooks as hook(flow=..., flow_run=..., state=...).
def _record_crash(flow, flow_run, state: State) -> None:  # noqa: ARG001
    """The run's process died (or never started the flow): the job must not stay running."""
    reason = f"the flow run crashed: {state.message or 'no reason given'}"
    if (job_id := (flow_run.parameters or {}).get("job_id")) and jobs.fail_job(job_id, reason):
        _count_end(job_id, metrics.TranscriptionOutcome.FAILED)


def _record_cancellation(flow, flow_run, state: State) -> None:  # noqa: ARG001
    """Cancelled from the Prefect UI or the API: the job says so too."""
    if (job_id := (flow_run.parameters or {}).get("job_id")) and jobs.cancel_job(job_id):
        _count_end(job_id, metrics.TranscriptionOutcome.CANCELLED)


def _call_back(flow, flow_run, state: State) -> None:  # noqa: ARG001
    """The run is over and the job's final status written: its callback, if it asked for
    one (a few attempts here; the workers' maintenance passes retry the rest)."""
    if job_id := (flow_run.parameters or {}).get("job_id"):
        deliver_now(CallbackSubject.TRANSCRIPTION, job_id)


@flow(
    name="transcribe",
    log_prints=True,
    persist_result=False,
    on_completion=[_call_back],
    on_failure=[_call_back],
    on_crashed=[_record_crash, _call_back],
    on_cancellation=[_record_cancellation, _call_back],
)
def transcribe(
    source: str,
    job_id: str | None = None,
    language: str | None = None,
    model: str | None = None,
    device: Literal["cpu", "cuda", "auto"] | None = None,
    compute_type: str | None = None,
    beam_size: int | None = None,
    vad_filter: bool | None = None,
    initial_prompt: str | None = None,
    word_timestamps: bool | None = None,
    lease_token: str | None = None,
) -> TranscriptionOutcome | State:
    """Transcribe one audio or video file; the job ends completed, or failed with a reason.

    ``lease_token`` (set by a task worker, which holds the job's lease) fences the job's
    writes: once another worker has taken the job over, this run records nothing and
    announces nothing. Without one the run takes the job's lease itself."""
    settings = get_settings()
    started = time.perf_counter()
    given = JobOptions(
        language=language,
        model=model,
        device=device,
        compute_type=compute_type,
        beam_size=beam_size,
        vad_filter=vad_filter,
        initial_prompt=initial_prompt,
        word_timestamps=word_timestamps,
    )
    options = AsrOptions.from_settings(settings, given)
    # Its options are kept with it: a run taken over after this one dies runs with them too.
    job = jobs.create_job(
        source,
        Path(source).name,
        job_id,
        settings.work_pool or None,
        options=given.model_dump_json(exclude_none=True),
    )
    if lease_token is not None:  # the task worker running it holds the lease and renews it
        return _transcribe(job.id, job.work_pool, source, options, lease_token, started)
    # A deployment run (or a command line's) holds the job's lease itself, renewed while it
    # runs: if its process dies with its worker, the lease runs out and a task worker of the
    # pool runs the job again (flows/asr_tasks.py; docs/ops-deadruns.md).
    seconds = settings.job.lease_seconds
    lease = jobs.take_for_run(job.id, process_owner(), seconds)
    if lease is None:
        return _not_recorded(job.id, folder=None)
    renew = partial(jobs.renew, job.id, lease, seconds)
    with renewing(renew, renewal_interval(seconds), f"job {job.id}"):
        return _transcribe(job.id, job.work_pool, source, options, lease.token, started)


def _transcribe(
    job_id: str,
    work_pool: str | None,
    source: str,
    options: AsrOptions,
    lease_token: str,
    started: float,
) -> TranscriptionOutcome | State:
    """The flow's work, once the run holds the job's lease (``lease_token``)."""
    settings = get_settings()
    name = Path(source).name
    probed = probe_media(source, settings.max_audio_seconds, return_state=True)
    if probed.is_failed():
        return _fail(job_id, name, probed.message, folder=None, token=lease_token)
    # A State the task returned became its own; a completed one holds the MediaInfo.
    info = cast(MediaInfo, probed.result())

    folder = f"{settings.data_dir.rstrip('/')}/jobs/{job_id}"
    if not jobs.start_job(job_id, runtime.flow_run.get_id(), info.duration, folder, lease_token):
        return _not_recorded(job_id, folder=None)
    _notify(JobEvent("started", job_id, name, duration_seconds=info.duration))
    split_options = SplitOptions(
        settings.chunk.target_seconds,
        settings.chunk.search_seconds,
        settings.chunk.first_seconds,
        workers=cluster_threads(),
    )
    plan = SplitPlan(info, f"{folder}/chunks", split_options)
    prepared = time.perf_counter()

    # The file is split while it decodes: its first chunks are transcribed meanwhile.
    runner = chunk_task_runner(planned_count(info.duration, split_options))
    # A job from Discord's /transcribe has its message follow the progress meanwhile.
    with runner, progress_edits(job_id):
        mapped = transcribe_chunks(runner, job_id, [], options, plan)
    if mapped.split_error:
        return _fail(job_id, name, mapped.split_error, folder, token=lease_token)
    if jobs.is_cancelled(job_id):
        _remove(folder)
        return Cancelled(message="cancelled by a user")
    chunks, results = mapped.chunks, mapped.results
    if mapped.failures:
        return _fail(
            job_id,
            name,
            f"{len(mapped.failures)} of {len(chunks)} chunks failed: " + "; ".join(mapped.failures),
            folder,
            token=lease_token,
        )
    asr_done = time.perf_counter()
    duration = chunks[-1].end  # what was decoded; a container may declare more

    transcript = merge(chunks, results, duration, options.model)
    timings = {
        "prepare_seconds": round(prepared - started, 3),
        "split_seconds": mapped.split_seconds,  # overlaps the transcription
        "transcribe_seconds": round(asr_done - prepared, 3),
        "model_seconds": round(sum(r.asr_seconds for r in results), 3),
    }
    if not jobs.holds_lease(job_id, lease_token):  # another run writes this folder now
        return _not_recorded(job_id, folder=None)
    files = store_transcript(replace(transcript, timings=timings), folder)
    timings["total_seconds"] = round(time.perf_counter() - started, 3)
    if not jobs.complete_job(job_id, transcript.language, options.model, token=lease_token):
        return _not_recorded(job_id, folder)
    metrics.transcription_ended(
        work_pool,
        metrics.TranscriptionOutcome.COMPLETED,
        audio_seconds=duration,
        working_seconds=timings["total_seconds"],
    )
    if not settings.keep_chunks:
        _remove(f"{folder}/chunks")
    _summary_artifact(job_id, name, transcript, timings, len(chunks))
    _notify(
        JobEvent(
            "completed",
            job_id,
            name,
            duration_seconds=duration,
            language=transcript.language,
            realtime_factor=round(duration / max(timings["total_seconds"], 1e-3), 2),
            transcript_text=transcript.text,
        )
    )
    return TranscriptionOutcome(
        job_id, transcript.text, transcript.language, duration, files, timings
    )


def _fail(
    job_id: str, name: str, reason: str | None, folder: str | None, token: str | None = None
) -> State:
    """Record the reason on the job, leave no partial output behind, end the run Failed."""
    reason = reason or "unknown error"
    if not jobs.fail_job(job_id, reason, token=token):
        return _not_recorded(job_id, folder)
    _count_end(job_id, metrics.TranscriptionOutcome.FAILED)
    if folder:
        _remove(folder)
    _notify(JobEvent("failed", job_id, name, error=reason))
    return Failed(message=reason)


def _count_end(job_id: str, outcome: metrics.TranscriptionOutcome) -> None:
    """This process ended the job: count it under the job's pool."""
    job = jobs.get_job(job_id)
    metrics.transcription_ended(job.work_pool if job else None, outcome)


def _not_recorded(job_id: str, folder: str | None) -> State:
    """The job refused this run's write: a user cancelled or deleted it (its files go), or
    another worker took it over when this run's lease ran out (that run speaks for it now)."""
    job = jobs.get_job(job_id)
    if job is None:  # deleted through the API while it ran
        if folder:
            _remove(folder)
        return Cancelled(message=f"job {job_id} was deleted; this run recorded nothing")
    if job.status == JobStatus.CANCELLED:
        if folder:
            _remove(folder)
        return Cancelled(message="cancelled by a user")
    if job.status in jobs.FINAL_STATES:
        return Cancelled(message=f"job {job_id} had already ended {job.status}; nothing recorded")
    message = f"job {job_id} was taken over by another worker; this run recorded nothing"
    print(message)
    return Cancelled(message=message)


def _notify(event: JobEvent) -> None:
    """Post the event to the configured Discord destination; a failure is only recorded."""
    settings = get_settings()
    if settings.public_url:
        base = settings.public_url.rstrip("/")
        event = replace(event, status_url=f"{base}/api/transcriptions/{event.job_id}")
    result = notify_job(settings.discord.block, event)
    # Delivered or skipped by configuration (event not enabled, no destination): nothing to say.
    if result.outcome in (DeliveryOutcome.REJECTED, DeliveryOutcome.GAVE_UP):
        jobs.record_notification_error(event.job_id, f"{event.event}: {result.reason}")


def _remove(folder: str) -> None:
    fs, root = fsspec.core.url_to_fs(folder)
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _summary_artifact(job_id: str, name: str, transcript, timings: dict, chunks: int) -> None:
    speed = transcript.duration / timings["total_seconds"] if timings["total_seconds"] else 0.0
    preview = transcript.text[:400] + ("…" if len(transcript.text) > 400 else "")
    create_markdown_artifact(
        key=f"transcript-{job_id}",
        description=f"Transcript of {name}",
        markdown=(
            f"## Transcript of `{name}`\n\n"
            "| job | duration | language | chunks | segments | speed |\n"
            "|---|---|---|---|---|---|\n"
            f"| `{job_id}` | {transcript.duration:.1f} s | {transcript.language or '-'} | "
            f"{chunks} | {len(transcript.segments)} | {speed:.1f}x real time |\n\n"
            f"> {preview or '(no speech)'}\n"
        ),
    )
