"""Admin statistics: a summary of the store's figures, the workers and the keys' quotas, and
the Discord embed that shows it.

``summarize`` is pure (what the hourly ``relay-stats`` flow posts, and what a Discord
``/stats`` command will answer with); ``stats_fields`` says it in lines of text, which both
``stats_embed`` (Discord) and the flow's artifact use. Nothing here reads the store.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from relay_settings import get_settings
from store.stats import RequestCount, StoreFigures
from store.workers import WorkerKind
from tasks.discord_limits import FIELD_VALUE_LIMIT, FOOTER_LIMIT, TITLE_LIMIT, truncate
from tasks.discord_webhook import DeliveryResult, WebhookMessage
from tasks.notify import post_to_destination
from tasks.worker_census import Census

logger = logging.getLogger("relay.stats")
COLOUR_OK, COLOUR_WARN = 0x5865F2, 0xE67E22


def _low(share_left: float | None) -> bool:
    """Under the share of its daily quota the key-quota alert holds keys to
    (``RELAY_OBJECTIVES_QUOTA_LEFT_RATIO``): flagged here as the alert would fire."""
    return share_left is not None and share_left < get_settings().objectives.quota_left_ratio


@dataclass(frozen=True)
class WorkerStatus:
    """One worker: up, or stale (silent for three of its heartbeats). ``pool`` is "-" for a
    Dask worker (it serves whoever submits)."""

    kind: WorkerKind
    pool: str
    name: str
    up: bool
    last_seen: datetime | None = None


@dataclass(frozen=True)
class KeyQuota:
    """One provider key's use today against its daily quota (None: no daily cap)."""

    provider: str
    key: str
    used: int
    daily_quota: int | None

    @property
    def share_left(self) -> float | None:
        """What is left of the daily quota, 0 to 1; None without a cap."""
        if not self.daily_quota:
            return None
        return max(self.daily_quota - self.used, 0) / self.daily_quota


@dataclass(frozen=True)
class BatchSummary:
    """The newest video batch."""

    batch_id: str
    status: str
    done: int
    failed: int
    total: int
    percent: float


@dataclass(frozen=True)
class StatsSummary:
    """Everything the admin statistics show, independent of how they are shown."""

    since: datetime
    until: datetime
    requests: tuple[RequestCount, ...]
    active_users: int
    latency_p95_seconds: float | None
    latency_samples: int
    keys: tuple[KeyQuota, ...]
    transcription_hours_done: float
    transcription_hours_queued: float
    batch: BatchSummary | None
    workers: tuple[WorkerStatus, ...] = field(default_factory=tuple)

    def workers_by_pool(self) -> dict[tuple[str, str], tuple[int, int]]:
        """``(kind, pool) -> (up, stale)``."""
        counts: dict[tuple[str, str], tuple[int, int]] = {}
        for worker in self.workers:
            up, stale = counts.get((worker.kind, worker.pool), (0, 0))
            counts[(worker.kind, worker.pool)] = (up + worker.up, stale + (not worker.up))
        return dict(sorted(counts.items()))

    @property
    def needs_attention(self) -> bool:
        """A stale worker, or a key close to its daily quota."""
        low = any(_low(k.share_left) for k in self.keys)
        return low or any(not worker.up for worker in self.workers)


def summarize(
    figures: StoreFigures,
    quotas: Mapping[tuple[str, str], int | None],
    workers: Sequence[WorkerStatus],
) -> StatsSummary:
    """The summary of the store's ``figures``, each key's daily quota (``(provider, key)``;
    keys with a quota and no use today are listed with 0) and the ``workers``."""
    used = {(k.provider, k.key): k.used for k in figures.keys}
    keys = tuple(
        KeyQuota(provider, key, used.get((provider, key), 0), quotas.get((provider, key)))
        for provider, key in sorted(used.keys() | quotas.keys())
    )
    batch = figures.batch
    return StatsSummary(
        since=figures.since,
        until=figures.until,
        requests=figures.requests,
        active_users=figures.active_users,
        latency_p95_seconds=figures.latency_p95_seconds,
        latency_samples=figures.latency_samples,
        keys=keys,
        transcription_hours_done=figures.transcription_hours_done,
        transcription_hours_queued=figures.transcription_hours_queued,
        batch=BatchSummary(
            batch.batch_id,
            batch.status,
            batch.done,
            batch.failed,
            batch.videos_total,
            batch.percent,
        )
        if batch
        else None,
        workers=tuple(sorted(workers, key=lambda w: (w.kind, w.pool, w.name))),
    )


def workers_of(census: Census) -> list[WorkerStatus]:
    """Every worker of the census (``GET /api/workers``), up or stale, as the summary
    lists them."""
    return [
        WorkerStatus(w.kind, w.pool or "-", w.name, not w.stale, w.last_heartbeat_at)
        for w in census.workers
    ]


def window_text(summary: StatsSummary) -> str:
    """``last 1 h`` / ``last 24 h``: the window the counts are over."""
    hours = (summary.until - summary.since).total_seconds() / 3600
    return f"last {hours:g} h"


def stats_fields(summary: StatsSummary) -> list[tuple[str, str]]:
    """The summary as ``(name, text)`` pairs, in the order they are shown."""
    return [
        (f"Requests ({window_text(summary)})", _requests(summary.requests)),
        ("Active users", str(summary.active_users)),
        ("Bot added latency p95", _latency(summary)),
        ("Quota used today (UTC)", _keys(summary.keys)),
        (
            "Transcription",
            f"{summary.transcription_hours_done:.2f} h done, "
            f"{summary.transcription_hours_queued:.2f} h queued",
        ),
        ("Video batch", _batch(summary.batch)),
        ("Workers", _workers(summary)),
    ]


def stats_embed(summary: StatsSummary) -> dict[str, Any]:
    """The Discord embed of the summary (within Discord's limits)."""
    return {
        "title": truncate(f"Relay statistics, {window_text(summary)}", TITLE_LIMIT),
        "color": COLOUR_WARN if summary.needs_attention else COLOUR_OK,
        "fields": [
            {"name": name, "value": truncate(text, FIELD_VALUE_LIMIT), "inline": False}
            for name, text in stats_fields(summary)
        ],
        "footer": {"text": truncate(f"since {summary.since:%Y-%m-%d %H:%M} UTC", FOOTER_LIMIT)},
        "timestamp": summary.until.isoformat(),
    }


@task(name="post-stats", retries=0, cache_policy=NO_CACHE, persist_result=False)
def post_stats(block_name: str, summary: StatsSummary) -> DeliveryResult:
    """Post the summary's embed to the destination block ``block_name``; never raises."""
    message = WebhookMessage(embeds=(stats_embed(summary),))
    return post_to_destination(block_name, [message], label="admin statistics", max_attempts=3)


def _requests(counts: Sequence[RequestCount]) -> str:
    by_kind: dict[str, list[str]] = {}
    for count in counts:
        by_kind.setdefault(count.kind, []).append(f"{count.count} {count.outcome}")
    lines = [f"{kind}: {', '.join(parts)}" for kind, parts in by_kind.items()]
    return "\n".join(lines) or "none"


def _latency(summary: StatsSummary) -> str:
    if summary.latency_p95_seconds is None:
        return "no answer delivered"
    return f"{summary.latency_p95_seconds:.2f} s ({summary.latency_samples} answers)"


def _keys(keys: Sequence[KeyQuota]) -> str:
    lines = []
    for key in keys:
        line = f"{key.provider}/{key.key}: {key.used:,}"
        if key.daily_quota:
            line += f" of {key.daily_quota:,} ({100 * key.used / key.daily_quota:.1f} %)"
            if _low(key.share_left):
                line += " (low)"
        lines.append(line)
    return "\n".join(lines) or "no key used"


def _batch(batch: BatchSummary | None) -> str:
    if batch is None:
        return "no batch yet"
    return (
        f"{batch.batch_id[:8]} {batch.status}: {batch.done} done, {batch.failed} failed "
        f"of {batch.total} ({batch.percent:.1f} %)"
    )


def _workers(summary: StatsSummary) -> str:
    lines = [
        f"{kind} {pool}: {up} up" + (f", {stale} stale" if stale else "")
        for (kind, pool), (up, stale) in summary.workers_by_pool().items()
    ]
    return "\n".join(lines) or "none seen"
