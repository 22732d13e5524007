"""``POST /api/alerts``: Alertmanager's webhook receiver. The alerts go to the alerts Discord
destination (``RELAY_DISCORD_ALERTS_BLOCK``, else ``RELAY_DISCORD_BLOCK``); 503 when Discord
did not take them, so Alertmanager sends the group again."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from api.auth import require_token
from api.errors import ApiError, error_responses
from tasks.alerts import Alert, AlertStatus, post_alerts

router = APIRouter(prefix="/api", tags=["alerts"], dependencies=[Depends(require_token)])
_TEXT = Field(default=None, max_length=4096)


def _rfc3339_text(value: object) -> object:
    """A time is given as text (RFC 3339), never as a number of seconds."""
    if value is not None and not isinstance(value, str | datetime):
        raise ValueError("expected an RFC 3339 date-time string")
    return value


def _json_integer(value: object) -> object:
    """A JSON integer (``3``, or ``3.0`` as JSON Schema allows), never a string or boolean."""
    if isinstance(value, str | bool):
        raise ValueError("expected an integer")
    return value


Moment = Annotated[datetime | None, BeforeValidator(_rfc3339_text)]
Count = Annotated[int, BeforeValidator(_json_integer)]


class AlertmanagerAlert(BaseModel):
    """One alert of the group (Alertmanager's webhook payload, version 4)."""

    model_config = ConfigDict(extra="ignore")

    status: AlertStatus
    labels: dict[str, str] = Field(default_factory=dict, max_length=64)
    annotations: dict[str, str] = Field(default_factory=dict, max_length=64)
    startsAt: Moment = None  # noqa: N815 (Alertmanager's field names)
    endsAt: Moment = None  # noqa: N815
    generatorURL: str | None = _TEXT  # noqa: N815
    fingerprint: str | None = Field(default=None, max_length=64)


class AlertmanagerWebhook(BaseModel):
    """What Alertmanager posts to a ``webhook_configs`` receiver."""

    model_config = ConfigDict(extra="ignore")

    version: str = Field(default="4", max_length=8)
    status: AlertStatus
    receiver: str = Field(default="", max_length=256)
    groupKey: str | None = _TEXT  # noqa: N815
    truncatedAlerts: Count = Field(default=0, ge=0)  # noqa: N815
    alerts: list[AlertmanagerAlert] = Field(max_length=1000)


class AlertsPosted(BaseModel):
    """The group reached Discord."""

    alerts: int = Field(description="alerts in the group")
    messages: int = Field(description="Discord messages posted")


@router.post(
    "/alerts",
    operation_id="receiveAlerts",
    summary="Alertmanager webhook: post the alerts to the alerts Discord destination",
    response_model=AlertsPosted,
    responses=error_responses(
        400, 401, 422, 503, _503="the alerts destination is missing or did not take them"
    ),
)
async def receive_alerts(request: Request, group: AlertmanagerWebhook) -> AlertsPosted:
    """Post each alert of the group as an embed (firing red, resolved green)."""
    alerts = [_alert(item) for item in group.alerts]
    block = request.app.state.settings.discord.alerts_destination()
    result = await run_in_threadpool(post_alerts, block, alerts)
    if not result.delivered:
        raise ApiError(
            503, "alerts_not_delivered", f"alerts not posted to Discord: {result.reason}"
        )
    return AlertsPosted(alerts=len(alerts), messages=result.parts_total)


def _alert(item: AlertmanagerAlert) -> Alert:
    labels, notes = item.labels, item.annotations
    return Alert(
        status=item.status,
        name=labels.get("alertname") or "alert",
        severity=labels.get("severity"),
        summary=notes.get("summary"),
        description=notes.get("description"),
        runbook_url=notes.get("runbook_url") or notes.get("runbook"),
        labels=tuple(sorted(labels.items())),
        starts_at=item.startsAt,
    )
