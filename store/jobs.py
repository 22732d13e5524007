"""The transcription job's life in the store: queued -> running -> completed | failed."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import update
from sqlmodel import select

from store.db import session_scope
from store.models import (
    ChunkStatus,
    JobStatus,
    TranscriptionChunk,
    TranscriptionJob,
    utcnow,
)

FINAL_STATES = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


def create_job(source_path: str, source_name: str, job_id: str | None = None) -> TranscriptionJob:
    """A new queued job (or the existing one with this id, e.g. created by the API)."""
    with session_scope() as session:
        if job_id and (existing := session.get(TranscriptionJob, job_id)):
            return existing
        job = TranscriptionJob(source_path=source_path, source_name=source_name)
        if job_id:
            job.id = job_id
        session.add(job)
        return job


def get_job(job_id: str) -> TranscriptionJob | None:
    """The job, or None."""
    with session_scope() as session:
        return session.get(TranscriptionJob, job_id)


def get_chunks(job_id: str) -> list[TranscriptionChunk]:
    """A job's chunks in order."""
    with session_scope() as session:
        query = select(TranscriptionChunk).where(TranscriptionChunk.job_id == job_id)
        return list(session.exec(query.order_by(TranscriptionChunk.index)))


def start_job(job_id: str, flow_run_id: str | None, duration: float, output_dir: str) -> None:
    """The job is running: its duration is known and its flow run is recorded."""
    _update(
        job_id,
        status=JobStatus.RUNNING,
        started_at=utcnow(),
        flow_run_id=flow_run_id,
        duration_seconds=duration,
        output_dir=output_dir,
    )


def add_chunks(job_id: str, bounds: Sequence[tuple[int, float, float]]) -> None:
    """Record the job's chunks, all pending (replacing any from an earlier attempt)."""
    with session_scope() as session:
        for old in session.exec(
            select(TranscriptionChunk).where(TranscriptionChunk.job_id == job_id)
        ):
            session.delete(old)
        session.flush()
        for index, start, end in bounds:
            session.add(
                TranscriptionChunk(job_id=job_id, index=index, start_seconds=start, end_seconds=end)
            )
        session.execute(
            update(TranscriptionJob)
            .where(TranscriptionJob.id == job_id)
            .values(
                chunks_total=len(bounds),
                chunks_done=0,
                chunks_failed=0,
                audio_seconds_done=0.0,
                duration_seconds=bounds[-1][2] if bounds else 0.0,
            )
        )


def finish_chunk(
    job_id: str,
    index: int,
    *,
    error: str | None = None,
    asr_seconds: float | None = None,
    worker_pid: int | None = None,
    segments: int | None = None,
) -> None:
    """Mark a chunk done (or failed with its reason) and bump the job's counters atomically."""
    status = ChunkStatus.FAILED if error else ChunkStatus.DONE
    with session_scope() as session:
        chunk = session.exec(
            select(TranscriptionChunk).where(
                TranscriptionChunk.job_id == job_id, TranscriptionChunk.index == index
            )
        ).one()
        chunk.status, chunk.error = status, error
        chunk.asr_seconds, chunk.worker_pid, chunk.segments = asr_seconds, worker_pid, segments
        session.add(chunk)
        counter = TranscriptionJob.chunks_failed if error else TranscriptionJob.chunks_done
        values = {counter.key: counter + 1}
        if not error:
            length = chunk.end_seconds - chunk.start_seconds
            values["audio_seconds_done"] = TranscriptionJob.audio_seconds_done + length
        session.execute(
            update(TranscriptionJob).where(TranscriptionJob.id == job_id).values(**values)
        )


def complete_job(job_id: str, language: str | None, model: str) -> None:
    """The transcript is stored: the job is completed."""
    _update(
        job_id,
        status=JobStatus.COMPLETED,
        language=language,
        model=model,
        finished_at=utcnow(),
        error=None,
    )


def fail_job(job_id: str, reason: str) -> None:
    """The job failed; the reason is what a person will read."""
    _update(job_id, status=JobStatus.FAILED, error=reason, finished_at=utcnow())


def _update(job_id: str, **values: object) -> None:
    with session_scope() as session:
        result = session.execute(
            update(TranscriptionJob).where(TranscriptionJob.id == job_id).values(**values)
        )
        if result.rowcount == 0:
            raise LookupError(f"no transcription job {job_id}")
