"""Post a bot request's answer (text, images, videos) back to Discord through a webhook URL."""

from __future__ import annotations

import logging
import re
import time
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

from discord_webhook import DiscordWebhook

from blocks.discord import allowed_hosts, redact_text, redact_webhook_url, validate_webhook_url
from tasks.notify import CONTENT_LIMIT, USERNAME_LIMIT, _post_once, _safe_name, _truncate

logger = logging.getLogger("relay.bot_reply")

ATTACHMENT_LIMIT = 10 * 1024 * 1024  # bytes per message: Discord's default upload limit
FILES_PER_MESSAGE = 10  # Discord's limit on attachments per message
MIN_SPLIT_LIMIT = 16  # room for a reopened fence, its closing line and some text

_FENCE = "```"
_CLOSE = "\n```"
_FENCE_TAG = re.compile(r"([A-Za-z0-9_+#.-]*)[ \t]*\r?\n")  # "```py\n": the language tag
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


@dataclass(frozen=True)
class ReplyDelivery:
    """How posting a reply went; ``error`` is safe to log and store (no webhook token)."""

    delivered: bool
    messages_sent: int  # accepted by Discord, those skipped as already sent included
    messages_total: int
    attempts: int  # HTTP requests made by this call
    error: str | None = None


@dataclass(frozen=True)
class _Message:
    content: str
    files: tuple[ReplyFile, ...] = ()


def split_message(text: str, limit: int = CONTENT_LIMIT) -> list[str]:
    """Split ``text`` into parts of at most ``limit`` characters for Discord.

    Cuts on a paragraph, else a line, else a word boundary (a hard cut as the last resort),
    dropping only the whitespace at each cut. A ``` code block cut in two is closed at the end
    of the part and reopened, with its language tag, at the start of the next.
    """
    if limit < MIN_SPLIT_LIMIT:
        raise ValueError(f"limit must be at least {MIN_SPLIT_LIMIT} characters, not {limit}")
    fences = _Fences(text)
    parts: list[str] = []
    pos = 0
    while pos < len(text):
        lang = fences.open_at(pos)
        reopen = "" if lang is None else _reopen(lang, limit)
        rest = text[pos:]
        if len(reopen) + len(rest) <= limit:
            if rest.strip():
                parts.append(reopen + rest)
            break
        cut, drop = _cut(rest, limit - len(reopen))
        if fences.open_at(fences.outside(pos + cut)) is not None:  # leave room to close it
            cut, drop = _cut(rest, limit - len(reopen) - len(_CLOSE))
        cut = fences.outside(pos + cut) - pos
        chunk = rest[:cut].rstrip()
        pos += cut
        while pos < len(text) and text[pos] in drop:
            pos += 1
        close = "" if fences.open_at(pos) is None else _CLOSE
        if close and text.startswith(_FENCE, pos):  # the block's own closing fence fits here
            pos += len(_FENCE)
        if chunk.strip():
            parts.append(reopen + chunk + close)
    return parts


def deliver_reply(
    url: str,
    reply: BotReply,
    *,
    username: str = "Relay",
    attachment_limit: int = ATTACHMENT_LIMIT,
    timeout: float = 10.0,
    max_attempts: int = 4,
    skip_messages: int = 0,
) -> ReplyDelivery:
    """Post ``reply`` to a webhook (or interaction follow-up) URL; never raises.

    Messages already accepted in an earlier call are passed over with ``skip_messages``
    (``messages_sent`` of that call), so a retried delivery never posts a part twice.
    """
    attempts = sent = total = 0
    try:
        try:
            validate_webhook_url(url, allowed_hosts())
        except ValueError as exc:
            logger.warning("request %s: not replying on Discord: %s", reply.request_id, exc)
            return ReplyDelivery(False, 0, 0, 0, f"invalid webhook URL: {exc}")
        where = redact_webhook_url(url)
        messages = _plan(reply, attachment_limit)
        total = len(messages)
        sent = min(max(skip_messages, 0), total)
        for index in range(sent, total):
            webhook = _webhook(url, reply.user_id, messages[index], username, timeout)
            ok, tries, error = _post_with_retries(webhook, url, max_attempts, timeout)
            attempts += tries
            if not ok:
                error = f"message {index + 1} of {total} not posted: {error}"
                logger.warning("request %s: reply to %s %s", reply.request_id, where, error)
                return ReplyDelivery(False, sent, total, attempts, error)
            sent += 1
        logger.info("request %s: posted %d message(s) to %s", reply.request_id, total, where)
        return ReplyDelivery(True, sent, total, attempts)
    except Exception as exc:  # a reply that cannot be posted must not fail the request's work
        error = redact_text(f"unexpected {type(exc).__name__}: {exc}", url or None)
        logger.warning("request %s: Discord reply failed: %s", reply.request_id, error)
        return ReplyDelivery(False, sent, total, attempts, error)


def _plan(reply: BotReply, attachment_limit: int) -> list[_Message]:
    """The messages to post, the same on every call for the same reply (resumable)."""
    mention = f"<@{reply.user_id}>" if _SNOWFLAKE.fullmatch(reply.user_id) else ""
    if reply.failure is not None:
        failure = reply.failure.strip() or "The request failed."
        return [_Message(_truncate(f"{mention} ⚠️ {failure}".lstrip(), CONTENT_LIMIT))]
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
    text = reply.text.strip()
    if text.count(_FENCE) % 2:  # an answer cut short inside a code block: close it
        text += _CLOSE
    body = "\n\n".join(part for part in (text, "\n".join(notes)) if part)
    if not body and not attached:
        body = "The request finished without an answer."
    parts = split_message(body, CONTENT_LIMIT - len(mention) - 1) if body else []
    if mention:
        parts[:1] = [f"{mention}\n{parts[0]}" if parts else mention]
    messages = [_Message(part) for part in parts]
    for number, batch in enumerate(_batches(attached, attachment_limit)):
        if number == 0 and messages:
            messages[-1] = _Message(messages[-1].content, batch)
        else:
            messages.append(_Message("", batch))
    return messages


def _batches(
    files: list[tuple[ReplyFile, int]], attachment_limit: int
) -> list[tuple[ReplyFile, ...]]:
    batches: list[list[ReplyFile]] = []
    room = 0
    for file, size in files:
        if not batches or len(batches[-1]) >= FILES_PER_MESSAGE or size > room:
            batches.append([])
            room = attachment_limit
        batches[-1].append(file)
        room -= size
    return [tuple(batch) for batch in batches]


def _webhook(
    url: str, user_id: str, message: _Message, username: str, timeout: float
) -> DiscordWebhook:
    webhook = DiscordWebhook(
        url=url,
        content=message.content or None,
        username=_truncate(username, USERNAME_LIMIT),
        timeout=timeout,
        rate_limit_retry=False,
        wait=True,  # Discord answers with the message, so "accepted" means posted
        # Only the requesting user may be pinged: no @everyone, @here or roles from an answer.
        allowed_mentions={"parse": [], "users": [user_id] if _SNOWFLAKE.fullmatch(user_id) else []},
    )
    for index, file in enumerate(message.files):
        name = _safe_name(file.name)
        webhook.files[f"files[{index}]"] = (name, Path(file.path).read_bytes())
        webhook.attachments.append({"id": index, "filename": name})
    return webhook


def _post_with_retries(
    webhook: DiscordWebhook, url: str, max_attempts: int, timeout: float
) -> tuple[bool, int, str | None]:
    attempts, error = 0, "no attempt made"
    while attempts < max(1, max_attempts):
        attempts += 1
        outcome = _post_once(webhook, attempts, timeout)
        if outcome.delivered:
            return True, attempts, None
        error = redact_text(outcome.error or "", url)
        if outcome.retry_in is None:
            return False, attempts, error
        if attempts < max_attempts:
            time.sleep(outcome.retry_in)
    return False, attempts, f"gave up after {attempts} attempts: {error}"


class _Fences:
    """The ``` fences of a text, and which code block (its language) is open where."""

    def __init__(self, text: str) -> None:
        self.ends: list[int] = []
        self.langs: list[str | None] = []  # after each fence: the open block's tag, None: closed
        lang: str | None = None
        for fence in re.finditer(_FENCE, text):
            if lang is None:
                tag = _FENCE_TAG.match(text, fence.end())
                lang = tag.group(1) if tag else ""
            else:
                lang = None
            self.ends.append(fence.end())
            self.langs.append(lang)

    def open_at(self, position: int) -> str | None:
        index = bisect_right(self.ends, position)
        return self.langs[index - 1] if index else None

    def outside(self, position: int) -> int:
        """``position``, moved back to the start of a fence it would cut through."""
        index = bisect_right(self.ends, position)
        if index < len(self.ends) and self.ends[index] - len(_FENCE) < position:
            return self.ends[index] - len(_FENCE)
        return position


def _reopen(lang: str, limit: int) -> str:
    reopen = f"{_FENCE}{lang}\n"
    return reopen if len(reopen) + len(_CLOSE) + 8 <= limit else f"{_FENCE}\n"


def _cut(rest: str, window: int) -> tuple[int, str]:
    """Where a part of at most ``window`` characters ends, and the whitespace dropped there."""
    for minimum in (window // 2, 1):  # a late boundary of any kind beats an early paragraph
        for separator, drop in (("\n\n", "\r\n"), ("\n", "\r\n"), (" ", " \t")):
            index = rest.rfind(separator, 0, window + len(separator))
            if index >= minimum:
                return index, drop
    return window, ""


def _size(path: Path) -> int | None:
    try:
        return Path(path).stat().st_size
    except OSError:
        return None


def _format_size(size: int) -> str:
    return f"{size / 1024**2:.1f} MiB" if size >= 1024**2 else f"{size / 1024:.1f} KiB"
