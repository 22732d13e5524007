"""Relay's one Discord webhook client: every post to Discord goes through ``post_messages``.

It refuses URLs outside the allowed hosts, honours Discord's 429s (``retry_after``,
``Retry-After``, ``X-RateLimit-Reset-After``), retries 5xx and network errors with backoff,
resumes a multi-part delivery after the parts already accepted, lets a message ping nobody
but the users it names, and keeps the webhook's token out of every log line and result.
Callers shape their messages (``tasks.discord_limits``) and read a typed ``DeliveryResult``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from blocks.discord import allowed_hosts, redact_text, redact_webhook_url, validate_webhook_url
from tasks.discord_limits import USERNAME_LIMIT, truncate

logger = logging.getLogger("relay.discord")

BACKOFF_SECONDS = 0.5  # first wait after a 5xx or a network error; doubles per attempt
MAX_WAIT_SECONDS = 30.0  # cap on any single wait, Retry-After included


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


@dataclass(frozen=True)
class Attachment:
    """A file of a message; ``content`` given as a path is read only when the part is posted."""

    name: str
    content: bytes | Path

    def read(self) -> bytes:
        """The file's bytes."""
        if isinstance(self.content, bytes):
            return self.content
        return Path(self.content).read_bytes()


@dataclass(frozen=True)
class WebhookMessage:
    """One Discord message (a part of a delivery), already within Discord's limits."""

    content: str = ""
    embeds: tuple[dict[str, Any], ...] = ()
    files: tuple[Attachment, ...] = ()


@dataclass(frozen=True)
class Sender:
    """Who the messages are posted as, where, and whom they may ping."""

    username: str = "Relay"
    avatar_url: str | None = None
    thread_id: str | None = None
    mention_users: tuple[str, ...] = ()  # the only users a message may ping; never roles/@everyone


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


@dataclass(frozen=True)
class _Try:
    """One HTTP request's answer: its status, what went wrong, and when to try again."""

    status_code: int | None
    error: str | None = None
    retry_in: float | None = None  # None: do not retry
    bucket_resets_in: float = 0.0  # accepted, but the rate-limit bucket is empty this long

    @property
    def accepted(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def _post_with_retries(
    url: str,
    message: WebhookMessage,
    sender: Sender,
    timeout: float,
    max_attempts: int,
    label: str,
    *,
    more_to_come: bool,
) -> DeliveryResult:
    """One part, retried on 429, 5xx and network errors; the result counts only this part."""
    attempts, answer, error = 0, _Try(None), "no attempt made"
    while attempts < max(1, max_attempts):
        attempts += 1
        answer = _post_once(url, message, sender, attempts, timeout)
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


def _post_once(
    url: str, message: WebhookMessage, sender: Sender, attempt: int, timeout: float
) -> _Try:
    params: dict[str, Any] = {}
    if sender.thread_id:
        params["thread_id"] = sender.thread_id
    params["wait"] = True  # Discord answers with the message, so "accepted" means posted
    payload = _payload(message, sender)
    # Redirects are never followed: the allowed hosts are the only ones a post may reach.
    request: dict[str, Any] = {"params": params, "timeout": timeout, "allow_redirects": False}
    if message.files:
        files: dict[str, tuple[str | None, bytes | str]] = {
            f"files[{index}]": (file.name, file.read()) for index, file in enumerate(message.files)
        }
        files["payload_json"] = (None, json.dumps(payload))
        request["files"] = files
    else:
        request["json"] = payload
    try:
        response = requests.post(url, **request)
    except requests.Timeout:
        return _Try(None, f"no response within {timeout:g} s", _backoff(attempt))
    except requests.ConnectionError as exc:
        return _Try(None, f"connection failed: {exc}", _backoff(attempt))
    except requests.RequestException as exc:
        return _Try(None, f"request failed: {type(exc).__name__}: {exc}")
    status = response.status_code
    if 200 <= status < 300:
        return _Try(status, bucket_resets_in=_bucket_resets_in(response))
    if status == 429:
        wait = _retry_after(response)
        if wait is None:
            return _Try(status, "rate limited (HTTP 429)", _backoff(attempt))
        return _Try(status, f"rate limited (HTTP 429, retry after {wait:g} s)", wait)
    if 300 <= status < 400:
        target = urlsplit(response.headers.get("Location", "")).hostname or "elsewhere"
        return _Try(status, f"HTTP {status}: a redirect to {target}, not followed")
    reason = f"HTTP {status}: {_discord_message(response)}"
    return _Try(status, reason, _backoff(attempt) if status >= 500 else None)


def _payload(message: WebhookMessage, sender: Sender) -> dict[str, Any]:
    allowed_mentions: dict[str, list[str]] = {"parse": []}  # no @everyone, @here or roles
    if sender.mention_users:
        allowed_mentions["users"] = list(sender.mention_users)
    payload: dict[str, Any] = {
        "username": truncate(sender.username, USERNAME_LIMIT),
        "allowed_mentions": allowed_mentions,
    }
    if message.content:
        payload["content"] = message.content
    if sender.avatar_url:
        payload["avatar_url"] = sender.avatar_url
    if message.embeds:
        payload["embeds"] = list(message.embeds)
    if message.files:
        payload["attachments"] = [
            {"id": index, "filename": file.name} for index, file in enumerate(message.files)
        ]
    return payload


def _backoff(attempt: int) -> float:
    return min(BACKOFF_SECONDS * 2 ** (attempt - 1), MAX_WAIT_SECONDS)


def _retry_after(response: requests.Response) -> float | None:
    """Seconds Discord asks us to wait: JSON ``retry_after``, else the headers; capped."""
    candidates = (
        _json_body(response).get("retry_after"),
        response.headers.get("Retry-After"),
        response.headers.get("X-RateLimit-Reset-After"),
    )
    for candidate in candidates:
        if candidate is None:
            continue
        try:
            seconds = float(str(candidate))
        except ValueError:
            continue
        if math.isfinite(seconds):
            return min(max(seconds, 0.0), MAX_WAIT_SECONDS)
    return None


def _bucket_resets_in(response: requests.Response) -> float:
    """Seconds until the webhook's rate-limit bucket refills, when this answer emptied it."""
    if response.headers.get("X-RateLimit-Remaining") != "0":
        return 0.0
    try:
        seconds = float(response.headers.get("X-RateLimit-Reset-After", ""))
    except ValueError:
        return 0.0
    return min(max(seconds, 0.0), MAX_WAIT_SECONDS) if math.isfinite(seconds) else 0.0


def _json_body(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _discord_message(response: requests.Response) -> str:
    message = _json_body(response).get("message") or response.reason or "error"
    return truncate(str(message), 200)


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
