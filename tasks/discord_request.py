"""One request to a Discord webhook, and what Discord's answer means for the next one.

The message types live here too; ``tasks.discord_webhook`` (the client callers use) posts
them part by part and decides when to retry.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from blocks.discord import redact_text
from tasks.discord_limits import USERNAME_LIMIT, truncate

BACKOFF_SECONDS = 0.5  # first wait after a 5xx or a network error; doubles per attempt
MAX_WAIT_SECONDS = 30.0  # cap on any single wait, Retry-After included


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


@dataclass(frozen=True)
class Answer:
    """Discord's answer to one request: its status, what went wrong, and when to try again."""

    status_code: int | None
    error: str | None = None
    retry_in: float | None = None  # None: do not retry
    bucket_resets_in: float = 0.0  # accepted, but the rate-limit bucket is empty this long

    @property
    def accepted(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def post_once(
    url: str,
    message: WebhookMessage,
    sender: Sender,
    attempt: int,
    timeout: float,
    *,
    edit: bool = False,
) -> Answer:
    """Post ``message`` once (``attempt`` of its part, which sets the backoff), or with
    ``edit`` PATCH the message ``url`` names (``.../messages/@original``) to it; never raises
    for an HTTP or network failure: the answer says whether and when to try again."""
    params: dict[str, Any] = {}
    if sender.thread_id:
        params["thread_id"] = sender.thread_id
    if not edit:  # an edit always answers with the message
        params["wait"] = True  # Discord answers with the message, so "accepted" means posted
    payload = _payload(message, sender, edit=edit)
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
        response = requests.request("PATCH" if edit else "POST", url, **request)
    except requests.Timeout:
        return Answer(None, f"no response within {timeout:g} s", _backoff(attempt))
    except requests.ConnectionError as exc:
        return Answer(None, f"connection failed: {exc}", _backoff(attempt))
    except requests.RequestException as exc:
        return Answer(None, f"request failed: {type(exc).__name__}: {exc}")
    status = response.status_code
    if 200 <= status < 300:
        return Answer(status, bucket_resets_in=_bucket_resets_in(response))
    if status == 429:
        wait = _retry_after(response)
        if wait is None:
            return Answer(status, "rate limited (HTTP 429)", _backoff(attempt))
        return Answer(status, f"rate limited (HTTP 429, retry after {wait:g} s)", wait)
    if 300 <= status < 400:
        target = urlsplit(response.headers.get("Location", "")).hostname or "elsewhere"
        return Answer(status, f"HTTP {status}: a redirect to {target}, not followed")
    reason = f"HTTP {status}: {_discord_message(response)}"
    return Answer(status, reason, _backoff(attempt) if status >= 500 else None)


def _payload(message: WebhookMessage, sender: Sender, *, edit: bool = False) -> dict[str, Any]:
    allowed_mentions: dict[str, list[str]] = {"parse": []}  # no @everyone, @here or roles
    if sender.mention_users:
        allowed_mentions["users"] = list(sender.mention_users)
    payload: dict[str, Any] = {"allowed_mentions": allowed_mentions}
    if not edit:  # a message keeps the name it was posted under
        payload["username"] = truncate(sender.username, USERNAME_LIMIT)
    if message.content:
        payload["content"] = message.content
    if sender.avatar_url and not edit:
        payload["avatar_url"] = sender.avatar_url
    if message.embeds:
        payload["embeds"] = list(message.embeds)
    if message.files:
        payload["attachments"] = [
            {"id": index, "filename": file.name} for index, file in enumerate(message.files)
        ]
    return payload


def _backoff(attempt: int) -> float:
    return min(BACKOFF_SECONDS * 2.0 ** (attempt - 1), MAX_WAIT_SECONDS)


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
