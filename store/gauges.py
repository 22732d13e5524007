"""What the store says at a Prometheus scrape: rows by state, queues per pool, resting keys,
keys' use today and the newest video batch, in a handful of grouped reads.

Every read is a GROUP BY over an indexed column or a lookup by key (the plans are in
docs/ops-metrics.md), on one autocommit connection: a scrape costs a few round trips
whatever the tables hold, and the counts by state are index-only scans.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from sqlalchemy import Float, case, func, literal, select, union_all
from sqlalchemy.engine import Connection

from store.db import reader
from store.models import (
    ApiKeyState,
    BotRequest,
    BotRequestStatus,
    JobStatus,
    TranscriptionJob,
    UsageCounter,
    Video,
    VideoBatch,
    table_of,
)

_JOB = table_of(TranscriptionJob)
_BOT = table_of(BotRequest)
_VIDEO = table_of(Video)
_BATCH = table_of(VideoBatch)
_KEY_STATE = table_of(ApiKeyState)
_USAGE = table_of(UsageCounter)


@dataclass
class PoolQueue:
    """One pool's waiting work: units queued, since when, and audio left (queued and
    running, transcription pools)."""

    queued: int = 0
    oldest_queued_at: datetime | None = None
    audio_seconds: float = 0.0


@dataclass
class StoreGauges:
    """The store's side of one scrape."""

    work_items: dict[tuple[str, str], int] = field(default_factory=dict)  # (workload, state)
    queues: dict[str | None, PoolQueue] = field(default_factory=dict)  # by stored pool
    key_rests: dict[tuple[str, str], datetime] = field(default_factory=dict)  # until
    key_used_today: dict[tuple[str, str], int] = field(default_factory=dict)
    latest_batch: dict[str, int] = field(default_factory=dict)  # video status -> videos


def key_scope(provider: str, key: str) -> str:
    """The usage counter a key's daily calls are counted under (``store.usage``)."""
    return f"key:{provider}:{key}"


def read_gauges(keys: Collection[tuple[str, str]] = (), now: datetime | None = None) -> StoreGauges:
    """Everything above; ``keys`` (provider, key name) are the keys with a daily quota,
    whose use today is read."""
    now = now or datetime.now(UTC)
    gauges = StoreGauges()
    with reader().connect() as connection:
        _work_items(connection, gauges)
        _queues(connection, gauges)
        for provider, key, until in connection.execute(
            select(_KEY_STATE.c.provider, _KEY_STATE.c.key_name, _KEY_STATE.c.cooled_until)
        ):
            gauges.key_rests[(provider, key)] = _aware(until)
        if keys:
            _used_today(connection, gauges, keys, now.astimezone(UTC).date())
        newest = select(_BATCH.c.id).order_by(_BATCH.c.created_at.desc()).limit(1)
        videos = (
            select(_VIDEO.c.status, func.count())
            .where(_VIDEO.c.batch_id == newest.scalar_subquery())
            .group_by(_VIDEO.c.status)
        )
        gauges.latest_batch = {str(status): count for status, count in connection.execute(videos)}
    return gauges


def _work_items(connection: Connection, gauges: StoreGauges) -> None:
    """Rows by state of every workload: three index-only GROUP BYs in one statement."""
    parts = [
        select(literal(workload), table.c.status, func.count()).group_by(table.c.status)
        for workload, table in (("transcription", _JOB), ("bot", _BOT), ("video", _VIDEO))
    ]
    for workload, status, count in connection.execute(union_all(*parts)):
        gauges.work_items[(workload, str(status))] = count


def _queues(connection: Connection, gauges: StoreGauges) -> None:
    """Queued units per pool, the oldest one's age, and the audio still to transcribe;
    only unfinished rows are read (the status index finds them)."""
    left = _JOB.c.duration_seconds - _JOB.c.audio_seconds_done
    queued_job = case((_JOB.c.status == JobStatus.QUEUED, 1), else_=0)
    jobs = (
        select(
            _JOB.c.work_pool,
            func.sum(queued_job),
            func.min(case((_JOB.c.status == JobStatus.QUEUED, _JOB.c.created_at))),
            func.sum(case((left > 0, left), else_=0.0)),
        )
        .where(_JOB.c.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
        .group_by(_JOB.c.work_pool)
    )
    requests = (
        select(_BOT.c.pool, func.count(), func.min(_BOT.c.created_at), literal(0.0, Float))
        .where(_BOT.c.status == BotRequestStatus.QUEUED)
        .group_by(_BOT.c.pool)
    )
    for pool, queued, oldest, audio in connection.execute(union_all(jobs, requests)):
        queue = gauges.queues.setdefault(pool, PoolQueue())
        queue.queued += int(queued or 0)
        queue.audio_seconds += float(audio or 0.0)
        if oldest is not None:
            oldest = _aware(oldest)
            if queue.oldest_queued_at is None or oldest < queue.oldest_queued_at:
                queue.oldest_queued_at = oldest


def _used_today(
    connection: Connection, gauges: StoreGauges, keys: Collection[tuple[str, str]], day: date
) -> None:
    """Today's calls of each key: primary-key lookups, never a scan of every user's counts."""
    scopes = {key_scope(provider, key): (provider, key) for provider, key in keys}
    rows = connection.execute(
        select(_USAGE.c.scope, _USAGE.c.used).where(
            _USAGE.c.day == day, _USAGE.c.scope.in_(list(scopes))
        )
    )
    for scope, used in rows:
        gauges.key_used_today[scopes[scope]] = used


def _aware(value: datetime | str) -> datetime:
    # SQLite returns naive datetimes for timezone-aware columns, and strings for an
    # aggregate of a CASE over one.
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)
