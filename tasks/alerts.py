"""Prometheus alerts (as Alertmanager sends them) posted to the alerts Discord destination.

One embed per alert: red while firing, green once resolved, its runbook as the embed's
link. Discord takes at most 6,000 characters of embeds per message, so alerts go four to a
message, and a group of more than ``MAX_ALERTS`` says how many it left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from tasks.discord_limits import FIELD_VALUE_LIMIT, FOOTER_LIMIT, TITLE_LIMIT, truncate
from tasks.discord_webhook import DeliveryResult, WebhookMessage
from tasks.notify import post_to_destination

COLOURS = {"firing": 0xE74C3C, "resolved": 0x2ECC71}
EMBEDS_PER_MESSAGE = 4  # each embed is at most ~1,400 characters: 4 stay under 6,000
MAX_ALERTS = 40  # ten messages: Discord's webhook rate limit is 5 per 2 s
DESCRIPTION_CHARS = 600
LABELS_CHARS = 400


class AlertStatus(StrEnum):
    """Alertmanager's two states of an alert."""

    FIRING = "firing"
    RESOLVED = "resolved"


@dataclass(frozen=True)
class Alert:
    """One alert, as the message shows it."""

    status: AlertStatus
    name: str
    severity: str | None = None
    summary: str | None = None
    description: str | None = None
    runbook_url: str | None = None
    labels: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    starts_at: datetime | None = None


def alert_embed(alert: Alert) -> dict[str, Any]:
    """The Discord embed of one alert."""
    title = f"[{alert.status.upper()}] {alert.name}"
    if alert.summary:
        title += f": {alert.summary}"
    embed: dict[str, Any] = {
        "title": truncate(title, TITLE_LIMIT),
        "color": COLOURS[alert.status],
    }
    if alert.description:
        embed["description"] = truncate(alert.description, DESCRIPTION_CHARS)
    if alert.runbook_url and alert.runbook_url.startswith(("https://", "http://")):
        embed["url"] = alert.runbook_url
    fields = []
    if alert.severity:
        fields.append({"name": "Severity", "value": truncate(alert.severity, 64), "inline": True})
    shown = ", ".join(f"{k}={v}" for k, v in alert.labels if k not in ("alertname", "severity"))
    if shown:
        value = truncate(shown, min(LABELS_CHARS, FIELD_VALUE_LIMIT))
        fields.append({"name": "Labels", "value": value, "inline": False})
    embed["fields"] = fields
    if alert.starts_at is not None:
        embed["footer"] = {
            "text": truncate(f"since {alert.starts_at:%Y-%m-%d %H:%M:%S %Z}", FOOTER_LIMIT)
        }
    return embed


def alert_messages(alerts: Sequence[Alert]) -> list[WebhookMessage]:
    """The messages that carry ``alerts`` (firing ones first), four embeds each."""
    ordered = sorted(alerts, key=lambda a: (a.status != AlertStatus.FIRING, a.name))
    shown, left_out = ordered[:MAX_ALERTS], len(ordered) - MAX_ALERTS
    embeds = [alert_embed(alert) for alert in shown]
    messages = [
        WebhookMessage(embeds=tuple(embeds[start : start + EMBEDS_PER_MESSAGE]))
        for start in range(0, len(embeds), EMBEDS_PER_MESSAGE)
    ]
    if left_out > 0:
        messages.append(WebhookMessage(f"… and {left_out} more alerts in this group."))
    return messages


def post_alerts(block_name: str, alerts: Sequence[Alert]) -> DeliveryResult:
    """Post ``alerts`` to the destination block ``block_name``; never raises. Two attempts
    per message: Alertmanager retries the whole group when this is not delivered."""
    return post_to_destination(block_name, alert_messages(alerts), "alerts", max_attempts=2)
