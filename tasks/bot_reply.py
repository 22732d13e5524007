"""Post a bot request's answer (text, images, videos) back to Discord through a webhook URL."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path

from blocks.discord import redact_text, redact_webhook_url
from tasks.discord_limits import (
    ATTACHMENT_LIMIT,
    CONTENT_LIMIT,
    close_open_fence,
    group_attachments,
    safe_file_name,
    split_message,
    truncate,
)
from tasks.discord_webhook import (
    EPHEMERAL,
    Attachment,
    DeliveryOutcome,
    DeliveryResult,
    Sender,
    WebhookMessage,
    post_messages,
)

logger = logging.getLogger("relay.bot_reply")

_SNOWFLAKE = re.compile(r"\d{1,20}")


@dataclass(frozen=True)
class ReplyFile:
    """A file of the answer: attached when small enough, else linked by ``url``."""

    name: str
    path: Path
    url: str | None = None


@dataclass(frozen=True)
class BotReply:
    """What to post back for one bot request; ``failure`` replaces the answer when set."""

    request_id: str
    user_id: str
    kind: str  # "chat" | "image" | "video"
    text: str = ""
    files: tuple[ReplyFile, ...] = ()
    failure: str | None = None


def deliver_reply(
    url: str,
    reply: BotReply,
    *,
    username: str = "Relay",
    attachment_limit: int = ATTACHMENT_LIMIT,
    timeout: float = 10.0,
    max_attempts: int = 4,
    skip_messages: int = 0,
    ephemeral: bool = False,
    thread_id: str | None = None,
    avatar_url: str | None = None,
) -> DeliveryResult:
    """Post ``reply`` to a webhook (or interaction follow-up) URL; never raises.

    Messages already accepted in an earlier call are passed over with ``skip_messages``
    (``parts_sent`` of that call), so a retried delivery never posts a part twice. With
    ``ephemeral`` (an interaction's follow-up only) only the user sees them.
    """
    user = reply.user_id
    try:
        messages = reply_messages(reply, attachment_limit)
        if ephemeral:
            messages = [replace(message, flags=EPHEMERAL) for message in messages]
    except Exception as exc:  # a reply that cannot be shaped must not fail the request's work
        reason = redact_text(f"unexpected {type(exc).__name__}: {exc}", url)
        logger.warning("request %s: Discord reply failed: %s", reply.request_id, reason)
        return DeliveryResult(DeliveryOutcome.GAVE_UP, reason=reason)
    result = post_messages(
        url,
        messages,
        # Only the requesting user may be pinged: no @everyone, @here or roles from an answer.
        sender=Sender(
            username=username,
            avatar_url=avatar_url,
            thread_id=thread_id,
            mention_users=(user,) if _is_snowflake(user) else (),
        ),
        already_sent=skip_messages,
        timeout=timeout,
        max_attempts=max_attempts,
        label=f"request {reply.request_id}: reply",
    )
    if result.delivered:
        where = redact_webhook_url(url)
        logger.info(
            "request %s: posted %d message(s) to %s", reply.request_id, result.parts_total, where
        )
    return result


def reply_messages(
    reply: BotReply, attachment_limit: int = ATTACHMENT_LIMIT
) -> list[WebhookMessage]:
    """The messages to post, the same on every call for the same reply (so it resumes)."""
    mention = f"<@{reply.user_id}>" if _is_snowflake(reply.user_id) else ""
    if reply.failure is not None:
        failure = reply.failure.strip() or "The request failed."
        return [WebhookMessage(truncate(f"{mention} ⚠️ {failure}".lstrip(), CONTENT_LIMIT))]
    attached: list[tuple[ReplyFile, int]] = []
    notes: list[str] = []
    for file in reply.files:
        size = _size(file.path)
        if size is not None and size <= attachment_limit:
            attached.append((file, size))
        elif file.url:
            notes.append(f"📎 {file.name}: {file.url}")
        elif size is None:
            notes.append(f"⚠️ {file.name} could not be read.")
        else:
            notes.append(f"📎 {file.name} ({_format_size(size)}) is too large to attach.")
    text = close_open_fence(reply.text.strip())  # an answer cut short inside a code block
    body = "\n\n".join(part for part in (text, "\n".join(notes)) if part)
    if not body and not attached:
        body = "The request finished without an answer."
    parts = split_message(body, CONTENT_LIMIT - len(mention) - 1) if body else []
    if mention:
        parts[:1] = [f"{mention}\n{parts[0]}" if parts else mention]
    messages = [WebhookMessage(part) for part in parts]
    for number, group in enumerate(group_attachments(attached, attachment_limit)):
        files = tuple(Attachment(safe_file_name(f.name), f.path) for f in group)
        if number == 0 and messages:
            messages[-1] = WebhookMessage(messages[-1].content, files=files)
        else:
            messages.append(WebhookMessage(files=files))
    return messages


def _is_snowflake(user_id: str) -> bool:
    return _SNOWFLAKE.fullmatch(user_id) is not None


def _size(path: Path) -> int | None:
    try:
        return Path(path).stat().st_size
    except OSError:
        return None


def _format_size(size: int) -> str:
    return f"{size / 1024**2:.1f} MiB" if size >= 1024**2 else f"{size / 1024:.1f} KiB"
