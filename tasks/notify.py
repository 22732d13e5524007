"""Post transcription job events to a Discord webhook; a failed notification never fails the job."""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Literal

import requests
from discord_webhook import DiscordEmbed, DiscordWebhook
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import rate_limit
from pydantic import ValidationError

from blocks.discord import (
    EVENTS,
    DiscordDestination,
    allowed_hosts,
    redact_text,
    redact_webhook_url,
    validate_webhook_url,
)

logger = logging.getLogger("relay.notify")

# Discord's documented limits (characters).
CONTENT_LIMIT = 2000
TITLE_LIMIT = 256
DESCRIPTION_LIMIT = 4096
FIELD_VALUE_LIMIT = 1024
FOOTER_LIMIT = 256
USERNAME_LIMIT = 80

BACKOFF_SECONDS = 0.5  # first wait after a 5xx or a network error; doubles per attempt
MAX_WAIT_SECONDS = 30.0  # cap on any single wait, Retry-After included

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


@dataclass(frozen=True)
class DeliveryResult:
    """How posting one event went; ``error`` is safe to log (no webhook token)."""

    delivered: bool
    attempts: int
    status_code: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class _Outcome:
    status_code: int | None
    error: str | None = None
    retry_in: float | None = None  # None: do not retry

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def deliver(
    destination: DiscordDestination,
    event: JobEvent,
    *,
    timeout: float = 10.0,
    max_attempts: int = 4,
) -> DeliveryResult:
    """Post ``event`` to ``destination``, retrying 429, 5xx and network errors; never raises."""
    attempts, url = 0, ""
    try:
        if event.event not in destination.events:
            logger.debug("job %s: %s is not enabled for Discord", event.job_id, event.event)
            return DeliveryResult(delivered=False, attempts=0, error="event not enabled")
        url = destination.webhook_url.get_secret_value()
        try:
            validate_webhook_url(url, allowed_hosts())
        except ValueError as exc:
            logger.warning("job %s: not notifying Discord: %s", event.job_id, exc)
            return DeliveryResult(delivered=False, attempts=0, error=str(exc))
        where = redact_webhook_url(url)
        webhook = _build_webhook(destination, event, url, timeout)

        outcome, error = _Outcome(status_code=None), "no attempt made"
        while attempts < max(1, max_attempts):
            attempts += 1
            outcome = _post_once(webhook, attempts, timeout)
            error = redact_text(outcome.error or "", url)
            if outcome.delivered:
                logger.info(
                    "job %s: posted %s to %s (attempt %d)",
                    event.job_id,
                    event.event,
                    where,
                    attempts,
                )
                return DeliveryResult(True, attempts, outcome.status_code)
            if outcome.retry_in is None:
                logger.warning(
                    "job %s: Discord refused the %s notification to %s: %s",
                    event.job_id,
                    event.event,
                    where,
                    error,
                )
                return DeliveryResult(False, attempts, outcome.status_code, error)
            if attempts < max_attempts:
                logger.warning(
                    "job %s: attempt %d to %s failed (%s); retrying in %.2f s",
                    event.job_id,
                    attempts,
                    where,
                    error,
                    outcome.retry_in,
                )
                time.sleep(outcome.retry_in)
        error = f"gave up after {attempts} attempts: {error}"
        logger.warning("job %s: %s notification to %s %s", event.job_id, event.event, where, error)
        return DeliveryResult(False, attempts, outcome.status_code, error)
    except Exception as exc:  # a notification must never fail the work it reports
        error = redact_text(f"unexpected {type(exc).__name__}: {exc}", url or None)
        logger.warning("job %s: Discord notification failed: %s", event.job_id, error)
        return DeliveryResult(False, attempts, None, error)


@task(name="notify-discord", retries=0, cache_policy=NO_CACHE, persist_result=False)
def notify_job(block_name: str, event: JobEvent) -> DeliveryResult:
    """Post ``event`` to the ``DiscordDestination`` block ``block_name``; never raises."""
    try:
        destination = DiscordDestination.load(block_name, _sync=True)
    except ValueError:
        error = f"no Discord destination '{block_name}' configured"
        logger.info("job %s: %s; not notifying", event.job_id, error)
        return DeliveryResult(delivered=False, attempts=0, error=error)
    except Exception as exc:
        error = f"could not load Discord destination '{block_name}': {_load_failure(exc)}"
        logger.warning("job %s: %s", event.job_id, error)
        return DeliveryResult(delivered=False, attempts=0, error=error)
    _take_rate_slot()
    return deliver(destination, event)


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


def _post_once(webhook: DiscordWebhook, attempt: int, timeout: float) -> _Outcome:
    # api_post_request, not execute(): execute() drops the attached files after the first try
    # and fails parsing an empty or non-JSON body; the retry policy here is the only one.
    try:
        response = webhook.api_post_request()
    except requests.Timeout:
        return _Outcome(None, f"no response within {timeout:g} s", _backoff(attempt))
    except requests.ConnectionError as exc:
        return _Outcome(None, f"connection failed: {exc}", _backoff(attempt))
    except requests.RequestException as exc:
        return _Outcome(None, f"request failed: {type(exc).__name__}: {exc}")
    status = response.status_code
    if 200 <= status < 300:
        return _Outcome(status)
    if status == 429:
        wait = _retry_after(response)
        if wait is None:
            return _Outcome(status, "rate limited (HTTP 429)", _backoff(attempt))
        return _Outcome(status, f"rate limited (HTTP 429, retry after {wait:g} s)", wait)
    reason = f"HTTP {status}: {_discord_message(response)}"
    return _Outcome(status, reason, _backoff(attempt) if status >= 500 else None)


def _backoff(attempt: int) -> float:
    return min(BACKOFF_SECONDS * 2 ** (attempt - 1), MAX_WAIT_SECONDS)


def _retry_after(response: requests.Response) -> float | None:
    """Seconds Discord asks us to wait: JSON ``retry_after``, else the headers; capped."""
    body = _json_body(response)
    candidates = (
        body.get("retry_after"),
        response.headers.get("Retry-After"),
        response.headers.get("X-RateLimit-Reset-After"),
    )
    for candidate in candidates:
        try:
            seconds = float(candidate)
        except (TypeError, ValueError):
            continue
        if math.isfinite(seconds):
            return min(max(seconds, 0.0), MAX_WAIT_SECONDS)
    return None


def _json_body(response: requests.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _discord_message(response: requests.Response) -> str:
    message = _json_body(response).get("message") or response.reason or "error"
    return _truncate(str(message), 200)


def _build_webhook(
    destination: DiscordDestination, event: JobEvent, url: str, timeout: float
) -> DiscordWebhook:
    webhook = DiscordWebhook(
        url=url,
        username=_truncate(destination.username, USERNAME_LIMIT),
        avatar_url=destination.avatar_url,
        thread_id=destination.thread_id,
        timeout=timeout,
        rate_limit_retry=False,
        # A transcript saying "@everyone" must not ping the channel.
        allowed_mentions={"parse": []},
    )
    webhook.add_embed(_embed(event))
    transcript = event.transcript_text
    if transcript is None:
        return webhook
    if not transcript.strip():
        webhook.set_content("The transcript is empty (no speech was found).")
    elif len(transcript) <= CONTENT_LIMIT:
        webhook.set_content(transcript)
    else:
        name = f"transcript-{_safe_name(event.job_id)}.txt"
        webhook.add_file(file=transcript.encode("utf-8"), filename=name)
        webhook.set_content(f"The transcript ({len(transcript):,} characters) is attached: {name}")
    return webhook


def _embed(event: JobEvent) -> DiscordEmbed:
    embed = DiscordEmbed(
        title=_truncate(f"{event.subject} {event.event}: {event.file_name}", TITLE_LIMIT),
        color=COLOURS[event.event],
    )
    if event.event == "failed":
        embed.set_description(
            _truncate(event.error or "No reason was recorded.", DESCRIPTION_LIMIT)
        )
    elif event.summary:
        embed.set_description(_truncate(event.summary, DESCRIPTION_LIMIT))
    if event.status_url and event.status_url.startswith(("https://", "http://")):
        embed.set_url(event.status_url)
    if event.duration_seconds is not None:
        embed.add_embed_field(name="Duration", value=_format_duration(event.duration_seconds))
    if event.language:
        embed.add_embed_field(name="Language", value=_truncate(event.language, FIELD_VALUE_LIMIT))
    if event.realtime_factor is not None:
        embed.add_embed_field(name="Real-time factor", value=f"{event.realtime_factor:.2f}")
    embed.set_footer(text=_truncate(f"job {event.job_id}", FOOTER_LIMIT))
    embed.set_timestamp()
    return embed


def _format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:100] or "job"


class _RedactWebhookTokens(logging.Filter):
    """Keeps webhook tokens out of urllib3's DEBUG lines, which print each request path."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def _install_log_redaction() -> None:
    for name in ("urllib3.connectionpool", "urllib3.util.retry"):
        target = logging.getLogger(name)
        if not any(type(f).__name__ == _RedactWebhookTokens.__name__ for f in target.filters):
            target.addFilter(_RedactWebhookTokens())


_install_log_redaction()
