"""The ``objectives`` settings group: what the alert rules hold Relay to.

A group of the one settings object (``RELAY_OBJECTIVES_<FIELD>``, ``settings.objectives``),
kept in its own module so that relay_settings.py stays readable. Nothing here reads the
environment: ``RelaySettings`` does. ``python -m cli alerts render`` writes these values
into infra/prometheus/rules.yml (docs/ops-alerts.md).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


def overrides(text: str) -> dict[str, float]:
    """``"a=1,b=2.5"`` as ``{"a": 1.0, "b": 2.5}``; a malformed pair raises ValueError."""
    pairs: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, number = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"{item!r} is not name=seconds")
        value = float(number)
        if value <= 0:
            raise ValueError(f"{item!r}: an objective must be above 0")
        pairs[name.strip()] = value
    return pairs


class ObjectivesSettings(BaseModel):
    """Service objectives: thresholds and windows of the alert rules."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    queue_age_seconds: float = Field(
        default=600.0,
        gt=0,
        description="Age the oldest queued item of a pool may reach before an alert (pools "
        "not named in queue_age_by_pool).",
    )
    queue_age_by_pool: str = Field(
        default="bot-chat=60,bot-media=300",
        description="Per-pool queue age objectives: comma-separated pool=seconds.",
    )
    bot_latency_p95_seconds: float = Field(
        default=2.0,
        gt=0,
        description="95th percentile, over 10 min, of the latency Relay adds to a bot "
        "request (kinds not named in bot_latency_by_kind).",
    )
    bot_latency_by_kind: str = Field(
        default="image=10,video=30",
        description="Per-kind bot latency objectives: comma-separated kind=seconds.",
    )
    error_ratio: float = Field(
        default=0.05, gt=0, lt=1, description="Share of the API's answers that may be 5xx."
    )
    error_window_seconds: float = Field(
        default=600.0, gt=0, description="How long the error ratio must be exceeded to alert."
    )
    quota_left_ratio: float = Field(
        default=0.10,
        gt=0,
        lt=1,
        description="Alert when a key has less than this share of its daily quota left.",
    )
    worker_silent_seconds: float = Field(
        default=90.0,
        gt=0,
        description="A worker whose last heartbeat is older than this is down (3 heartbeats).",
    )
    down_for_seconds: float = Field(
        default=120.0, gt=0, description="How long a scrape target may be down before an alert."
    )
    late_runs_for_seconds: float = Field(
        default=300.0, gt=0, description="How long Prefect runs may stay Late before an alert."
    )
    behind_window_seconds: float = Field(
        default=600.0,
        gt=0,
        description="Transcription is behind when its queued audio exceeds what the workers "
        "cleared in this window, for this long.",
    )
    runbook_url: str = Field(
        default="docs/runbooks.md",
        description="Where each alert's runbook link points (a #section is appended): the "
        "runbook page as operators open it, for example its URL in your repository.",
    )

    @field_validator("queue_age_by_pool", "bot_latency_by_kind")
    @classmethod
    def _pairs_parse(cls, value: str) -> str:
        overrides(value)
        return value

    def queue_age_for(self, pool: str) -> float:
        """The queue age objective of ``pool``."""
        return overrides(self.queue_age_by_pool).get(pool, self.queue_age_seconds)

    def bot_latency_for(self, kind: str) -> float:
        """The added-latency p95 objective of bot requests of ``kind``."""
        return overrides(self.bot_latency_by_kind).get(kind, self.bot_latency_p95_seconds)
