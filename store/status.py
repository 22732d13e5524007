"""Read-side queries for the API: listing, queue depth and measured throughput."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, func, or_
from sqlmodel import select

from store.db import session_scope
from store.models import JobStatus, TranscriptionJob

# Until Relay has finished a job, estimates assume this speed (tiny.en on two CPU cores).
DEFAULT_REALTIME_FACTOR = 10.0
DEFAULT_STARTUP_SECONDS = 15.0


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
                TranscriptionJob.duration_seconds,
                TranscriptionJob.created_at,
                TranscriptionJob.started_at,
                TranscriptionJob.finished_at,
            )
            .where(
                TranscriptionJob.status == JobStatus.COMPLETED,
                TranscriptionJob.started_at.is_not(None),
                TranscriptionJob.duration_seconds > 0,
            )
            .order_by(TranscriptionJob.finished_at.desc())
            .limit(recent)
        ).all()
    if not rows:
        return Throughput(DEFAULT_REALTIME_FACTOR, DEFAULT_STARTUP_SECONDS, 0)
    audio = sum(r[0] for r in rows)
    working = sum(max((_aware(r[3]) - _aware(r[2])).total_seconds(), 0.001) for r in rows)
    waiting = sum(max((_aware(r[2]) - _aware(r[1])).total_seconds(), 0.0) for r in rows)
    return Throughput(audio / working, waiting / len(rows), len(rows))


_recent: tuple[float, Throughput] | None = None


def recent_throughput(max_age: float = 2.0) -> Throughput:
    """``throughput()``, re-measured at most every ``max_age`` seconds (status reads are hot)."""
    global _recent
    now = time.monotonic()
    if _recent is None or now - _recent[0] > max_age:
        _recent = (now, throughput())
    return _recent[1]


def _aware(moment: datetime) -> datetime:
    from datetime import UTC

    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def encode_cursor(job: TranscriptionJob) -> str:
    raw = f"{_aware(job.created_at).isoformat()}|{job.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Raises ValueError for a cursor this API did not hand out."""
    try:
        created, job_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return datetime.fromisoformat(created), job_id
    except Exception as err:
        raise ValueError("cursor is not one this API returned") from err


def list_jobs(
    status: JobStatus | None, limit: int, cursor: str | None
) -> tuple[list[TranscriptionJob], str | None]:
    """Newest first, ``limit`` at a time; returns the page and the cursor of the next one."""
    query = select(TranscriptionJob)
    if status:
        query = query.where(TranscriptionJob.status == status)
    if cursor:
        created, job_id = decode_cursor(cursor)
        query = query.where(
            or_(
                TranscriptionJob.created_at < created,
                and_(TranscriptionJob.created_at == created, TranscriptionJob.id < job_id),
            )
        )
    query = query.order_by(TranscriptionJob.created_at.desc(), TranscriptionJob.id.desc())
    with session_scope() as session:
        page = list(session.exec(query.limit(limit + 1)))
    more = len(page) > limit
    page = page[:limit]
    return page, encode_cursor(page[-1]) if more and page else None


def queue_counts() -> dict[str, dict[str, int]]:
    """Jobs waiting and running, per work pool."""
    with session_scope() as session:
        rows = session.exec(
            select(TranscriptionJob.work_pool, TranscriptionJob.status, func.count())
            .where(TranscriptionJob.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
            .group_by(TranscriptionJob.work_pool, TranscriptionJob.status)
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
                        TranscriptionJob.duration_seconds - TranscriptionJob.audio_seconds_done
                    ),
                    0.0,
                )
            ).where(TranscriptionJob.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
        ).one()
    return float(total or 0.0)
