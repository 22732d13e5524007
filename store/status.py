"""Read-side queries for the API: listing, queue depth and measured throughput."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, func, or_
from sqlmodel import col, select

from store.db import session_scope
from store.models import JobStatus, TranscriptionJob, as_utc

# Share of a job's progress that decoding and splitting stand for (about what they take of a
# job's time on CPU); transcription is the rest, as the workers decode the audio.
PREPARED_PERCENT = 3.0
# Until Relay has finished a job, estimates assume this speed (tiny.en on two CPU cores).
DEFAULT_REALTIME_FACTOR = 10.0
DEFAULT_STARTUP_SECONDS = 15.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def progress_percent(job: TranscriptionJob) -> float:
    """How far the job is, 0-100: split first, then the audio transcribed; 100 only once
    its transcript is stored (the job's GET, and its Discord message)."""
    duration = job.duration_seconds or 0.0
    if job.status == JobStatus.COMPLETED:
        return 100.0
    if duration and job.chunks_total:  # decoded and split: the rest is transcription
        # A job run again from the start shows what its earlier attempt reached until the
        # new one passes it: progress never goes back.
        done = max(job.audio_seconds_done, job.progress_floor_seconds)
        transcribed = min(done / duration, 1.0)
        return min(99.9, PREPARED_PERCENT + (100.0 - PREPARED_PERCENT) * transcribed)
    return 0.0


@dataclass(frozen=True)
class Throughput:
    """Measured speed of recent jobs: audio seconds per wall second, plus fixed start-up."""

    realtime_factor: float
    startup_seconds: float
    measured_jobs: int

    def seconds_for(self, audio_seconds: float) -> float:
        return self.startup_seconds + audio_seconds / self.realtime_factor


def throughput(recent: int = 20) -> Throughput:
    """Speed of the last ``recent`` completed jobs (a default until any has completed)."""
    with session_scope() as session:
        rows = session.exec(
            select(
                col(TranscriptionJob.duration_seconds),
                col(TranscriptionJob.created_at),
                col(TranscriptionJob.started_at),
                col(TranscriptionJob.finished_at),
            )
            .where(
                col(TranscriptionJob.status) == JobStatus.COMPLETED,
                col(TranscriptionJob.started_at).is_not(None),
                col(TranscriptionJob.finished_at).is_not(None),
                col(TranscriptionJob.duration_seconds) > 0,
            )
            .order_by(col(TranscriptionJob.finished_at).desc())
            .limit(recent)
        ).all()
    # The query leaves out rows without these values; the comprehension says so to the types.
    jobs = [
        (audio, as_utc(created), as_utc(started), as_utc(finished))
        for audio, created, started, finished in rows
        if audio is not None and started is not None and finished is not None
    ]
    if not jobs:
        return Throughput(DEFAULT_REALTIME_FACTOR, DEFAULT_STARTUP_SECONDS, 0)
    audio = sum(job[0] for job in jobs)
    working = sum(max((job[3] - job[2]).total_seconds(), 0.001) for job in jobs)
    waiting = sum(max((job[2] - job[1]).total_seconds(), 0.0) for job in jobs)
    return Throughput(audio / working, waiting / len(jobs), len(jobs))


_recent: tuple[float, Throughput] | None = None


def recent_throughput(max_age: float = 2.0) -> Throughput:
    """``throughput()``, re-measured at most every ``max_age`` seconds (status reads are hot)."""
    global _recent
    now = time.monotonic()
    if _recent is None or now - _recent[0] > max_age:
        _recent = (now, throughput())
    return _recent[1]


def encode_cursor(job: TranscriptionJob) -> str:
    """``<created_at in µs since the epoch>.<job id>``: a position in the newest-first order."""
    created = as_utc(job.created_at)
    micros = (created - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}.{job.id}"


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The position a cursor names. Any ``<digits>.<id>`` is one (a keyset position need not
    be a job's), so the OpenAPI pattern says every rule; ValueError for anything else."""
    micros, dot, job_id = cursor.partition(".")
    if not (dot and micros.isdigit() and len(micros) <= 16 and job_id):
        raise ValueError("a cursor is <digits>.<job id>, as next_cursor hands it out")
    created = _EPOCH + timedelta(microseconds=int(micros))
    return created, job_id


def list_jobs(
    status: JobStatus | None, limit: int, cursor: str | None
) -> tuple[list[TranscriptionJob], str | None]:
    """Newest first, ``limit`` at a time; returns the page and the cursor of the next one."""
    query = select(TranscriptionJob)
    if status:
        query = query.where(col(TranscriptionJob.status) == status)
    if cursor:
        created, job_id = decode_cursor(cursor)
        query = query.where(
            or_(
                col(TranscriptionJob.created_at) < created,
                and_(
                    col(TranscriptionJob.created_at) == created,
                    col(TranscriptionJob.id) < job_id,
                ),
            )
        )
    query = query.order_by(col(TranscriptionJob.created_at).desc(), col(TranscriptionJob.id).desc())
    with session_scope() as session:
        page = list(session.exec(query.limit(limit + 1)))
    more = len(page) > limit
    page = page[:limit]
    return page, encode_cursor(page[-1]) if more and page else None


def queue_counts() -> dict[str, dict[str, int]]:
    """Jobs waiting and running, per work pool."""
    with session_scope() as session:
        rows = session.exec(
            select(col(TranscriptionJob.work_pool), col(TranscriptionJob.status), func.count())
            .where(col(TranscriptionJob.status).in_([JobStatus.QUEUED, JobStatus.RUNNING]))
            .group_by(col(TranscriptionJob.work_pool), col(TranscriptionJob.status))
        ).all()
    pools: dict[str, dict[str, int]] = {}
    for pool, status, count in rows:
        counts = pools.setdefault(pool or "unassigned", {"queued": 0, "running": 0})
        counts[str(status)] = count
    return pools


def waiting_audio_seconds() -> float:
    """Audio still to transcribe in queued and running jobs (work ahead of a new job)."""
    with session_scope() as session:
        total = session.exec(
            select(
                func.coalesce(
                    func.sum(
                        col(TranscriptionJob.duration_seconds)
                        - col(TranscriptionJob.audio_seconds_done)
                    ),
                    0.0,
                )
            ).where(col(TranscriptionJob.status).in_([JobStatus.QUEUED, JobStatus.RUNNING]))
        ).one()
    return float(total or 0.0)
