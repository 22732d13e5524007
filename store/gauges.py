"""What the store says at a Prometheus scrape: rows by state, queues per pool, resting keys,
keys' use today and the newest video batch, in a handful of grouped reads.

Every read is a GROUP BY over an indexed column or a lookup by key (the plans are in
docs/ops-metrics.md), in one read transaction: a scrape costs the same few statements
whatever the tables hold; only the counts by state grow with the tables (index-only scans).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Float, bindparam, case, func, literal, select, text, union_all

from store.db import get_engine
from store.models import (
    ApiKeyState,
    BotRequest,
    BotRequestStatus,
    JobStatus,
    TranscriptionJob,
    UsageCounter,
    Video,
    VideoBatch,
    as_utc,
    table_of,
)
from store.usage import key_scope

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


# Built once: a scrape only runs them (SQLAlchemy's compiled cache does the rest).
_BY_STATE = union_all(
    *(
        select(literal(workload), table.c.status, func.count()).group_by(table.c.status)
        for workload, table in (("transcription", _JOB), ("bot", _BOT), ("video", _VIDEO))
    )
)
_LEFT = _JOB.c.duration_seconds - _JOB.c.audio_seconds_done
_QUEUES = union_all(
    select(
        _JOB.c.work_pool,
        func.sum(case((_JOB.c.status == JobStatus.QUEUED, 1), else_=0)),
        func.min(case((_JOB.c.status == JobStatus.QUEUED, _JOB.c.created_at))),
        func.sum(case((_LEFT > 0, _LEFT), else_=0.0)),
    )
    .where(_JOB.c.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
    .group_by(_JOB.c.work_pool),
    select(_BOT.c.pool, func.count(), func.min(_BOT.c.created_at), literal(0.0, Float))
    .where(_BOT.c.status == BotRequestStatus.QUEUED)
    .group_by(_BOT.c.pool),
)
_RESTS = select(_KEY_STATE.c.provider, _KEY_STATE.c.key_name, _KEY_STATE.c.cooled_until)
_USED_TODAY = select(_USAGE.c.scope, _USAGE.c.used).where(
    _USAGE.c.day == bindparam("day"), _USAGE.c.scope.in_(bindparam("scopes", expanding=True))
)
_NEWEST_BATCH = select(_BATCH.c.id).order_by(_BATCH.c.created_at.desc()).limit(1)
_LATEST_BATCH = (
    select(_VIDEO.c.status, func.count())
    .where(_VIDEO.c.batch_id == _NEWEST_BATCH.scalar_subquery())
    .group_by(_VIDEO.c.status)
)
_NO_PARALLEL = text("SET LOCAL max_parallel_workers_per_gather = 0")


def read_gauges(keys: Collection[tuple[str, str]] = (), now: datetime | None = None) -> StoreGauges:
    """Everything above; ``keys`` (provider, key name) are the keys with a daily quota,
    whose use today is read."""
    now = now or datetime.now(UTC)
    gauges = StoreGauges()
    with get_engine().connect() as connection, connection.begin():
        if connection.dialect.name == "postgresql":
            # Parallel workers cost tens of ms to launch, for reads that take a few.
            connection.execute(_NO_PARALLEL)
        # Rows by state: index-only scans of each table's status index.
        for workload, status, count in connection.execute(_BY_STATE):
            gauges.work_items[(workload, str(status))] = count
        # Queued and running rows only, found through the status indexes.
        for pool, queued, oldest, audio in connection.execute(_QUEUES):
            _add_queue(gauges, pool, int(queued or 0), oldest, float(audio or 0.0))
        for provider, key, until in connection.execute(_RESTS):
            gauges.key_rests[(provider, key)] = _aware(until)
        if keys:  # primary-key lookups, never a scan of every user's counts
            scopes = {key_scope(provider, key): (provider, key) for provider, key in keys}
            day = now.astimezone(UTC).date()
            for scope, used in connection.execute(_USED_TODAY, {"day": day, "scopes": [*scopes]}):
                gauges.key_used_today[scopes[scope]] = used
        for status, count in connection.execute(_LATEST_BATCH):
            gauges.latest_batch[str(status)] = count
    return gauges


def _add_queue(
    gauges: StoreGauges, pool: str | None, queued: int, oldest: datetime | None, audio: float
) -> None:
    queue = gauges.queues.setdefault(pool, PoolQueue())
    queue.queued += queued
    queue.audio_seconds += audio
    if oldest is not None:
        oldest = _aware(oldest)
        if queue.oldest_queued_at is None or oldest < queue.oldest_queued_at:
            queue.oldest_queued_at = oldest


def _aware(value: datetime | str) -> datetime:
    # SQLite returns naive datetimes for timezone-aware columns, and strings for an
    # aggregate of a CASE over one.
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return as_utc(value)
