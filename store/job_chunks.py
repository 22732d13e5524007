"""A transcription job's chunks in the store: recorded as the audio is split, their progress
as they decode, their end (done or failed) counted on the job."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import case, update
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from store.db import rows_matched, session_scope
from store.models import ChunkStatus, TranscriptionChunk, TranscriptionJob, table_of

_JOB = table_of(TranscriptionJob)


def get_chunks(job_id: str) -> list[TranscriptionChunk]:
    """A job's chunks in order."""
    with session_scope() as session:
        query = select(TranscriptionChunk).where(col(TranscriptionChunk.job_id) == job_id)
        return list(session.exec(query.order_by(col(TranscriptionChunk.index))))


def add_chunks(job_id: str, bounds: Sequence[tuple[int, float, float]]) -> None:
    """Record the job's chunks, all pending (replacing any from an earlier attempt)."""
    with session_scope() as session:
        _forget_chunks(session, job_id)
        for index, start, end in bounds:
            session.add(
                TranscriptionChunk(job_id=job_id, index=index, start_seconds=start, end_seconds=end)
            )
        session.execute(
            update(TranscriptionJob)
            .where(col(TranscriptionJob.id) == job_id)
            .values(
                chunks_total=len(bounds),
                chunks_done=0,
                chunks_failed=0,
                **_progress_restarts(),
                duration_seconds=bounds[-1][2] if bounds else 0.0,
            )
        )


def add_chunk(job_id: str, index: int, start: float, end: float) -> None:
    """Record one more chunk, pending, as the audio is split while it decodes; the first
    replaces any chunks (and counters) of an earlier attempt."""
    with session_scope() as session:
        counters: dict[str, object] = {"chunks_total": index + 1}
        if index == 0:
            _forget_chunks(session, job_id)
            counters |= {"chunks_done": 0, "chunks_failed": 0, **_progress_restarts()}
        session.add(
            TranscriptionChunk(job_id=job_id, index=index, start_seconds=start, end_seconds=end)
        )
        session.execute(
            update(TranscriptionJob).where(col(TranscriptionJob.id) == job_id).values(**counters)
        )


def _progress_restarts() -> dict[str, object]:
    """A new attempt's progress counters: its transcribed audio from 0, what the earlier
    attempts reached kept as the floor the job's progress shows (never going back)."""
    done, floor = (
        col(TranscriptionJob.audio_seconds_done),
        col(TranscriptionJob.progress_floor_seconds),
    )
    return {
        "progress_floor_seconds": case((done > floor, done), else_=floor),
        "audio_seconds_done": 0.0,
    }


def _chunk_row(job_id: str, index: int) -> SelectOfScalar[TranscriptionChunk]:
    """The query for a job's chunk ``index``."""
    return select(TranscriptionChunk).where(
        col(TranscriptionChunk.job_id) == job_id, col(TranscriptionChunk.index) == index
    )


def _forget_chunks(session: Session, job_id: str) -> None:
    """Delete a job's chunk rows (an earlier attempt's), before new ones are added."""
    for old in session.exec(
        select(TranscriptionChunk).where(col(TranscriptionChunk.job_id) == job_id)
    ):
        session.delete(old)
    session.flush()


def finish_chunk(
    job_id: str,
    index: int,
    *,
    error: str | None = None,
    asr_seconds: float | None = None,
    worker_pid: int | None = None,
    worker_host: str | None = None,
    segments: int | None = None,
) -> None:
    """Mark a chunk done (or failed with its reason) and bump the job's counters atomically."""
    status = ChunkStatus.FAILED if error else ChunkStatus.DONE
    with session_scope() as session:
        chunk = session.exec(_chunk_row(job_id, index)).one()
        chunk.status, chunk.error = status, error
        chunk.asr_seconds, chunk.segments = asr_seconds, segments
        chunk.worker_pid, chunk.worker_host = worker_pid, worker_host
        session.add(chunk)
        counter = "chunks_failed" if error else "chunks_done"
        values: dict[str, object] = {counter: _JOB.c[counter] + 1}
        if not error:  # what the worker has not reported yet
            rest = max(chunk.end_seconds - chunk.start_seconds - chunk.seconds_done, 0.0)
            values["audio_seconds_done"] = col(TranscriptionJob.audio_seconds_done) + rest
        session.execute(
            update(TranscriptionJob).where(col(TranscriptionJob.id) == job_id).values(**values)
        )


def record_chunk_progress(job_id: str, index: int, seconds: float) -> bool:
    """A pending chunk has decoded ``seconds`` of its audio: move it and the job's progress
    forward by what is new. Never backwards (a retry re-decodes from 0); False when nothing
    moved."""
    with session_scope() as session:
        chunk = session.exec(_chunk_row(job_id, index)).first()
        if chunk is None or chunk.status != ChunkStatus.PENDING:
            return False
        seconds = min(seconds, chunk.end_seconds - chunk.start_seconds)
        before = chunk.seconds_done
        if seconds <= before:
            return False
        moved = session.execute(  # only from the value read: two writers never add twice
            update(TranscriptionChunk)
            .where(
                col(TranscriptionChunk.id) == chunk.id,
                col(TranscriptionChunk.seconds_done) == before,
                col(TranscriptionChunk.status) == ChunkStatus.PENDING,
            )
            .values(seconds_done=seconds)
        )
        if rows_matched(moved) != 1:
            return False
        session.execute(
            update(TranscriptionJob)
            .where(col(TranscriptionJob.id) == job_id)
            .values(
                audio_seconds_done=col(TranscriptionJob.audio_seconds_done) + (seconds - before)
            )
        )
        return True
