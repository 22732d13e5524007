"""Relay's one Discord webhook client: every post to Discord goes through ``post_messages``
(and an interaction's original response is edited or deleted through ``edit_original`` and
``delete_original``).

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
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Literal

from blocks.discord import allowed_hosts, redact_text, redact_webhook_url, validate_webhook_url
from tasks.discord_request import (
    EPHEMERAL,
    UNKNOWN_MESSAGE,
    Answer,
    Attachment,
    Sender,
    WebhookMessage,
    send_once,
)

__all__ = [
    "EPHEMERAL",
    "UNKNOWN_MESSAGE",
    "Attachment",
    "DeliveryOutcome",
    "DeliveryResult",
    "Sender",
    "WebhookMessage",
    "delete_original",
    "edit_original",
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
    discord_code: int | None = None  # Discord's JSON error code of that answer, if any

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
                return DeliveryResult(
                    part.outcome, attempts, sent, total, status, reason, part.discord_code
                )
            sent += 1
        logger.debug("%s: posted %d message(s) to %s", label, total - skipped, where)
        return DeliveryResult(DeliveryOutcome.DELIVERED, attempts, sent, total, status)
    except Exception as exc:  # a post that cannot be made must never fail the work it reports
        reason = redact_text(f"unexpected {type(exc).__name__}: {exc}", url or None)
        logger.warning("%s: Discord post failed: %s", label, reason)
        return DeliveryResult(DeliveryOutcome.GAVE_UP, attempts, sent, total, status, reason)


def edit_original(
    url: str,
    message: WebhookMessage,
    *,
    timeout: float = 10.0,
    max_attempts: int = 4,
    label: str = "Discord edit",
) -> DeliveryResult:
    """Edit the original response of the interaction whose follow-up URL is ``url`` (PATCH
    ``/messages/@original``: its "thinking…" message); never raises. The message pings
    nobody. Retried as a post is; editing again to the same text is harmless."""
    return _on_original("PATCH", url, message, timeout, max_attempts, label)


def delete_original(
    url: str, *, timeout: float = 10.0, max_attempts: int = 4, label: str = "Discord delete"
) -> DeliveryResult:
    """Delete the original response of the interaction whose follow-up URL is ``url``;
    never raises. A message already gone (Discord's 404 "Unknown Message", 10008) counts as
    deleted; a 404 "Unknown Webhook" or a 401 means the interaction's token is dead."""
    return _on_original("DELETE", url, None, timeout, max_attempts, label)


def _on_original(
    method: Literal["PATCH", "DELETE"],
    url: str,
    message: WebhookMessage | None,
    timeout: float,
    max_attempts: int,
    label: str,
) -> DeliveryResult:
    """One request on an interaction's original response, with the posts' allow-list,
    retries and redaction."""
    try:
        try:
            validate_webhook_url(url, allowed_hosts())
        except ValueError as exc:
            logger.warning("%s: not sent to Discord: %s", label, exc)
            return DeliveryResult(DeliveryOutcome.REJECTED, reason=f"webhook URL refused: {exc}")
        result = _post_with_retries(
            url, message, Sender(), timeout, max_attempts, label, more_to_come=False, method=method
        )
        gone = method == "DELETE" and result.discord_code == UNKNOWN_MESSAGE
        if result.delivered or gone:  # a message deleted already is deleted
            return DeliveryResult(
                DeliveryOutcome.DELIVERED, result.attempts, 1, 1, result.status_code
            )
        logger.warning(
            "%s: %s on %s failed (%s): %s",
            label,
            method,
            redact_webhook_url(url),
            result.outcome,
            result.reason,
        )
        return replace(result, parts_total=1)
    except Exception as exc:  # as post_messages: never fail the work it reports
        reason = redact_text(f"unexpected {type(exc).__name__}: {exc}", url or None)
        logger.warning("%s: Discord %s failed: %s", label, method, reason)
        return DeliveryResult(DeliveryOutcome.GAVE_UP, parts_total=1, reason=reason)


def _post_with_retries(
    url: str,
    message: WebhookMessage | None,
    sender: Sender,
    timeout: float,
    max_attempts: int,
    label: str,
    *,
    more_to_come: bool,
    method: Literal["POST", "PATCH", "DELETE"] = "POST",
) -> DeliveryResult:
    """One part, retried on 429, 5xx and network errors; the result counts only this part."""
    attempts, answer, error = 0, Answer(None), "no attempt made"
    while attempts < max(1, max_attempts):
        attempts += 1
        answer = send_once(method, url, message, sender, attempts, timeout)
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
                DeliveryOutcome.REJECTED,
                attempts,
                status_code=answer.status_code,
                reason=error,
                discord_code=answer.code,
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
