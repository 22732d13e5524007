"""Relay's one Discord webhook client: every post to Discord goes through ``post_messages``.

It refuses URLs outside the allowed hosts, honours Discord's 429s (``retry_after``,
``Retry-After``, ``X-RateLimit-Reset-After``), retries 5xx and network errors with backoff,
resumes a multi-part delivery after the parts already accepted, lets a message ping nobody
but the users it names, and keeps the webhook's token out of every log line and result.
Callers shape their messages (``tasks.discord_limits``) and read a typed ``DeliveryResult``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from blocks.discord import allowed_hosts, redact_text, redact_webhook_url, validate_webhook_url
from tasks.discord_request import Answer, Attachment, Sender, WebhookMessage, post_once

__all__ = [
    "Attachment",
    "DeliveryOutcome",
    "DeliveryResult",
    "Sender",
    "WebhookMessage",
    "edit_message",
    "post_messages",
]

logger = logging.getLogger("relay.discord")


class DeliveryOutcome(StrEnum):
    """How a delivery ended, as the caller must act on it."""

    # Every part accepted by Discord.
    DELIVERED = "delivered"
    # Nothing to post, by configuration (event not enabled, no destination).
    SKIPPED = "skipped"
    # Refused by Relay (URL not allowed) or by Discord (4xx): posting it again will not help.
    REJECTED = "rejected"
    # 429s, 5xx, timeouts or network errors outlasted the attempts: a later try may succeed.
    GAVE_UP = "gave_up"


@dataclass(frozen=True)
class DeliveryResult:
    """What came of posting; ``reason`` is safe to log and store (it never holds the token)."""

    outcome: DeliveryOutcome
    attempts: int = 0  # HTTP requests made by this call
    parts_sent: int = 0  # parts accepted, those passed over as already sent included
    parts_total: int = 0
    status_code: int | None = None  # Discord's answer to the last request, None: no answer
    reason: str | None = None

    @property
    def delivered(self) -> bool:
        """Whether every part has reached Discord."""
        return self.outcome is DeliveryOutcome.DELIVERED


def post_messages(
    url: str,
    messages: Sequence[WebhookMessage],
    *,
    sender: Sender = Sender(),
    already_sent: int = 0,
    timeout: float = 10.0,
    max_attempts: int = 4,
    webhook_hosts: Iterable[str] | None = None,
    label: str = "Discord post",
) -> DeliveryResult:
    """Post ``messages`` in order to the webhook ``url``; never raises.

    The first ``already_sent`` messages (``parts_sent`` of an earlier call) are passed over,
    so a retried delivery never posts a part twice. Each part gets ``max_attempts`` requests.
    ``webhook_hosts`` are the extra allowed hosts (default: ``RELAY_WEBHOOK_ALLOWED_HOSTS``).
    ``label`` names the post in log lines (``"job 42: completed"``).
    """
    attempts = sent = total = 0
    status: int | None = None
    try:
        hosts = allowed_hosts() if webhook_hosts is None else tuple(webhook_hosts)
        try:
            validate_webhook_url(url, hosts)
        except ValueError as exc:
            logger.warning("%s: not posting to Discord: %s", label, exc)
            return DeliveryResult(DeliveryOutcome.REJECTED, reason=f"webhook URL refused: {exc}")
        where = redact_webhook_url(url)
        total = len(messages)
        skipped = sent = min(max(already_sent, 0), total)
        for index in range(sent, total):
            more = index + 1 < total
            part = _post_with_retries(
                url, messages[index], sender, timeout, max_attempts, label, more_to_come=more
            )
            attempts += part.attempts
            status = part.status_code
            if part.outcome is not DeliveryOutcome.DELIVERED:
                reason = part.reason or "not posted"
                if total > 1:
                    reason = f"message {index + 1} of {total} not posted: {reason}"
                logger.warning(
                    "%s: not delivered to %s (%s): %s", label, where, part.outcome, reason
                )
                return DeliveryResult(part.outcome, attempts, sent, total, status, reason)
            sent += 1
        logger.debug("%s: posted %d message(s) to %s", label, total - skipped, where)
        return DeliveryResult(DeliveryOutcome.DELIVERED, attempts, sent, total, status)
    except Exception as exc:  # a post that cannot be made must never fail the work it reports
        reason = redact_text(f"unexpected {type(exc).__name__}: {exc}", url or None)
        logger.warning("%s: Discord post failed: %s", label, reason)
        return DeliveryResult(DeliveryOutcome.GAVE_UP, attempts, sent, total, status, reason)


def edit_message(
    url: str,
    message: WebhookMessage,
    *,
    message_id: str = "@original",
    timeout: float = 10.0,
    max_attempts: int = 4,
    webhook_hosts: Iterable[str] | None = None,
    label: str = "Discord edit",
) -> DeliveryResult:
    """Edit a message the webhook ``url`` posted (``@original``: an interaction's first
    answer, deferred or not) to ``message``, checked, retried and redacted as
    ``post_messages`` does; never raises."""
    try:
        hosts = allowed_hosts() if webhook_hosts is None else tuple(webhook_hosts)
        try:
            validate_webhook_url(url, hosts)
        except ValueError as exc:
            logger.warning("%s: not editing on Discord: %s", label, exc)
            return DeliveryResult(DeliveryOutcome.REJECTED, reason=f"webhook URL refused: {exc}")
        target = f"{url.strip().rstrip('/')}/messages/{message_id}"
        part = _post_with_retries(
            target, message, Sender(), timeout, max_attempts, label, more_to_come=False, edit=True
        )
        if not part.delivered:
            logger.warning("%s: not edited (%s): %s", label, part.outcome, part.reason)
        done = 1 if part.delivered else 0
        return DeliveryResult(part.outcome, part.attempts, done, 1, part.status_code, part.reason)
    except Exception as exc:  # an edit that cannot be made must never fail the work it reports
        reason = redact_text(f"unexpected {type(exc).__name__}: {exc}", url or None)
        logger.warning("%s: Discord edit failed: %s", label, reason)
        return DeliveryResult(DeliveryOutcome.GAVE_UP, reason=reason)


def _post_with_retries(
    url: str,
    message: WebhookMessage,
    sender: Sender,
    timeout: float,
    max_attempts: int,
    label: str,
    *,
    more_to_come: bool,
    edit: bool = False,
) -> DeliveryResult:
    """One part, retried on 429, 5xx and network errors; the result counts only this part."""
    attempts, answer, error = 0, Answer(None), "no attempt made"
    while attempts < max(1, max_attempts):
        attempts += 1
        answer = post_once(url, message, sender, attempts, timeout, edit=edit)
        if answer.accepted:
            if more_to_come and answer.bucket_resets_in:
                # Discord said the next request would be a 429: wait for the bucket instead.
                time.sleep(answer.bucket_resets_in)
            return DeliveryResult(
                DeliveryOutcome.DELIVERED, attempts, status_code=answer.status_code
            )
        error = redact_text(answer.error or "", url)
        if answer.retry_in is None:
            return DeliveryResult(
                DeliveryOutcome.REJECTED, attempts, status_code=answer.status_code, reason=error
            )
        if attempts < max_attempts:
            logger.warning(
                "%s: attempt %d to %s failed (%s); retrying in %.2f s",
                label,
                attempts,
                redact_webhook_url(url),
                error,
                answer.retry_in,
            )
            time.sleep(answer.retry_in)
    return DeliveryResult(
        DeliveryOutcome.GAVE_UP,
        attempts,
        status_code=answer.status_code,
        reason=f"gave up after {attempts} attempts: {error}",
    )
