"""Post transcription job events to a Discord webhook; a failed notification never fails the job."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import rate_limit
from pydantic import ValidationError

from blocks.discord import EVENTS, DiscordDestination, redact_text, redact_webhook_url
from blocks.prefect_sync import load_block
from tasks.discord_limits import (
    CONTENT_LIMIT,
    DESCRIPTION_LIMIT,
    FIELD_VALUE_LIMIT,
    FOOTER_LIMIT,
    TITLE_LIMIT,
    safe_file_name,
    truncate,
)
from tasks.discord_webhook import (
    Attachment,
    DeliveryOutcome,
    DeliveryResult,
    Sender,
    WebhookMessage,
    post_messages,
)

logger = logging.getLogger("relay.notify")

COLOURS = {"started": 0x3498DB, "completed": 0x2ECC71, "failed": 0xE74C3C}

EventName = Literal["started", "completed", "failed"]


@dataclass(frozen=True)
class JobEvent:
    """Something that happened to a transcription job, as a notification reports it."""

    event: EventName
    job_id: str
    file_name: str
    duration_seconds: float | None = None
    language: str | None = None
    realtime_factor: float | None = None
    status_url: str | None = None
    transcript_text: str | None = None
    error: str | None = None
    subject: str = "Transcription"  # what the job is: "Transcription", "Video batch", ...
    summary: str | None = None  # a line of figures shown on events other than "failed"

    def __post_init__(self) -> None:
        if self.event not in EVENTS:
            raise ValueError(f"unknown job event {self.event!r}; expected one of {EVENTS}")


def deliver(
    destination: DiscordDestination,
    event: JobEvent,
    *,
    timeout: float = 10.0,
    max_attempts: int = 4,
) -> DeliveryResult:
    """Post ``event`` to ``destination``, retrying 429, 5xx and network errors; never raises."""
    if event.event not in destination.events:
        logger.debug("job %s: %s is not enabled for Discord", event.job_id, event.event)
        return DeliveryResult(DeliveryOutcome.SKIPPED, reason="event not enabled")
    try:
        url = destination.webhook_url.get_secret_value()
        message = job_message(event)
    except Exception as exc:  # a hand-built or stale block: report it, never fail the job
        reason = redact_text(f"unexpected {type(exc).__name__}: {exc}")
        logger.warning("job %s: Discord notification failed: %s", event.job_id, reason)
        return DeliveryResult(DeliveryOutcome.GAVE_UP, reason=reason)
    sender = Sender(
        username=destination.username,
        avatar_url=destination.avatar_url,
        thread_id=destination.thread_id,
    )
    result = post_messages(
        url,
        [message],
        sender=sender,
        timeout=timeout,
        max_attempts=max_attempts,
        label=f"job {event.job_id}: {event.event} notification",
    )
    if result.delivered:
        where = redact_webhook_url(url)
        logger.info(
            "job %s: posted %s to %s (attempt %d)",
            event.job_id,
            event.event,
            where,
            result.attempts,
        )
    return result


def job_message(event: JobEvent) -> WebhookMessage:
    """The Discord message for ``event``: an embed, and the transcript as text or a file."""
    embeds = (_embed(event),)
    transcript = event.transcript_text
    if transcript is None:
        return WebhookMessage(embeds=embeds)
    if not transcript.strip():
        return WebhookMessage("The transcript is empty (no speech was found).", embeds)
    if len(transcript) <= CONTENT_LIMIT:
        return WebhookMessage(transcript, embeds)
    name = f"transcript-{safe_file_name(event.job_id)}.txt"
    return WebhookMessage(
        f"The transcript ({len(transcript):,} characters) is attached: {name}",
        embeds,
        (Attachment(name, transcript.encode("utf-8")),),
    )


@task(name="notify-discord", retries=0, cache_policy=NO_CACHE, persist_result=False)
def notify_job(block_name: str, event: JobEvent) -> DeliveryResult:
    """Post ``event`` to the ``DiscordDestination`` block ``block_name``; never raises."""
    destination = load_destination(block_name, f"job {event.job_id}")
    if isinstance(destination, DeliveryResult):
        return destination
    _take_rate_slot()
    return deliver(destination, event)


def load_destination(block_name: str, label: str) -> DiscordDestination | DeliveryResult:
    """The ``DiscordDestination`` block, or the result to report instead of posting:
    ``SKIPPED`` when there is none, ``REJECTED`` when it is invalid, ``GAVE_UP`` when it
    could not be read (the Prefect API unreachable). Never raises."""
    try:
        return load_block(DiscordDestination, block_name)
    except ValueError:
        reason = f"no Discord destination '{block_name}' configured"
        logger.info("%s: %s; not posting", label, reason)
        return DeliveryResult(DeliveryOutcome.SKIPPED, reason=reason)
    except Exception as exc:
        reason = f"could not load Discord destination '{block_name}': {_load_failure(exc)}"
        logger.warning("%s: %s", label, reason)
        # An invalid block (its host no longer allowed, ...) needs fixing; anything else
        # (the Prefect API unreachable) may pass.
        invalid = isinstance(exc.__cause__, ValidationError)
        outcome = DeliveryOutcome.REJECTED if invalid else DeliveryOutcome.GAVE_UP
        return DeliveryResult(outcome, reason=reason)


def post_to_destination(
    block_name: str, messages: list[WebhookMessage], label: str, max_attempts: int = 4
) -> DeliveryResult:
    """Post ``messages`` to the destination block ``block_name`` as it says (name, avatar,
    thread), whatever its job events; never raises (admin statistics, alerts)."""
    destination = load_destination(block_name, label)
    if isinstance(destination, DeliveryResult):
        return destination
    _take_rate_slot()
    sender = Sender(
        username=destination.username,
        avatar_url=destination.avatar_url,
        thread_id=destination.thread_id,
    )
    url = destination.webhook_url.get_secret_value()
    return post_messages(url, messages, sender=sender, max_attempts=max_attempts, label=label)


DISCORD_RATE_LIMIT = "discord-webhook"  # created by `make bootstrap` from deployments/quotas.yaml


def _take_rate_slot() -> None:
    """Share Discord's per-webhook budget with every other Relay process (a no-op until the
    bootstrap has created the limit); Discord's own 429s are honoured regardless."""
    try:
        rate_limit(DISCORD_RATE_LIMIT, timeout_seconds=60)
    except Exception as exc:
        logger.info("Discord rate limit slot not taken (%s); posting anyway", type(exc).__name__)


def _load_failure(exc: Exception) -> str:
    # Prefect wraps a block that fails validation in a RuntimeError; the cause says why.
    cause = exc.__cause__
    if isinstance(cause, ValidationError):
        errors = cause.errors(include_url=False, include_input=False)
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
    return redact_text(f"{type(exc).__name__}: {exc}")


def _embed(event: JobEvent) -> dict[str, Any]:
    embed: dict[str, Any] = {
        "title": truncate(f"{event.subject} {event.event}: {event.file_name}", TITLE_LIMIT),
        "color": COLOURS[event.event],
    }
    if event.event == "failed":
        description = event.error or "No reason was recorded."
        embed["description"] = truncate(description, DESCRIPTION_LIMIT)
    elif event.summary:
        embed["description"] = truncate(event.summary, DESCRIPTION_LIMIT)
    if event.status_url and event.status_url.startswith(("https://", "http://")):
        embed["url"] = event.status_url
    fields = []
    if event.duration_seconds is not None:
        fields.append(("Duration", _format_duration(event.duration_seconds)))
    if event.language:
        fields.append(("Language", truncate(event.language, FIELD_VALUE_LIMIT)))
    if event.realtime_factor is not None:
        fields.append(("Real-time factor", f"{event.realtime_factor:.2f}"))
    embed["fields"] = [{"name": name, "value": value, "inline": True} for name, value in fields]
    embed["footer"] = {"text": truncate(f"job {event.job_id}", FOOTER_LIMIT)}
    embed["timestamp"] = datetime.now(UTC).isoformat()
    return embed


def _format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
