"""Delivering a finished bot request: its answer (or why there is none) to where it goes.

A request's destination is a webhook: a block's, or a URL sealed in the store (an
interaction's follow-up). An interaction's follow-up has two more rules
(docs/discord-expiry.md):

- Its token lives 15 minutes. Once Discord refuses it (401, or 404 "Unknown Webhook") or it
  is older than that, the answer goes to the route's fallback block, mentioning the user;
  with none, the delivery fails saying so and the answer stays readable at
  ``GET /api/bot/requests/{id}``.
- A failure (a refusal known only now, such as every key's quota spent) is told only to the
  user: the "thinking…" message is deleted, then the failure posted as an ephemeral
  follow-up. Right after a deferred response, a follow-up would instead edit the "thinking…"
  message and keep its visibility, whatever its flags (Discord's "Create Followup Message").
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import replace
from urllib.parse import quote

from blocks.discord import DiscordDestination, redact_text
from blocks.prefect_sync import load_block
from bot_config import FallbackBlock, get_bot_config
from relay_settings import RelaySettings, get_settings
from store import bot as bot_store
from store import followups
from store.leases import Lease
from store.models import BotRequest, BotRequestStatus, DeliveryStatus, FollowUp
from store.sealed import seal, signing_key, unseal
from tasks.bot_answer import answer_folder
from tasks.bot_reply import BotReply, ReplyFile, deliver_reply
from tasks.discord_webhook import UNKNOWN_MESSAGE, DeliveryOutcome, DeliveryResult, delete_original

log = logging.getLogger("relay.bot")
NOTICE_WAIT_SECONDS = 1.0  # a delivery that finds a notice under way tries again this soon


def deliver(request_id: str, lease: Lease) -> DeliveryStatus | None:
    """Post a finished request's answer (or refusal) to its destination, holding its delivery
    ``lease``; records how it went and when to try again. Never raises."""
    request = bot_store.get_request(request_id)
    if request is None or request.delivery_status == DeliveryStatus.DELIVERED:
        return request.delivery_status if request else None
    settings = get_settings()
    if request.followup is not None and followups.notice_under_way(request_id):
        # The notice edits the "thinking…" message that a first follow-up would replace.
        return _record(
            request,
            DeliveryResult(DeliveryOutcome.GAVE_UP, reason="waiting for the expiry notice"),
            lease,
            settings,
            retry_in=NOTICE_WAIT_SECONDS,
        )
    if request.followup == FollowUp.EXPIRED:
        return _deliver_late(request, lease, settings, 0, "it expired earlier")
    if followups.token_dead_by_age(request):
        return _deliver_late(request, lease, settings, 0, "older than Discord's 15 minutes")
    try:
        url = destination_url(request)
    except Exception as err:
        failed = DeliveryResult(
            DeliveryOutcome.REJECTED,
            reason=f"no destination to post to: {redact_text(str(err))}",
        )
        return _record(request, failed, lease, settings, give_up=True)
    result = _post(url, request, settings)
    if request.followup is not None and token_refused(result):
        why = f"Discord answered {result.reason}"
        log.info("bot request %s: the interaction's token is dead (%s)", request_id, why)
        return _deliver_late(request, lease, settings, result.attempts, why)
    return _record(request, result, lease, settings)


def token_refused(result: DeliveryResult) -> bool:
    """Whether Discord refused an interaction's token: 401, or 404 for the webhook (a 404
    "Unknown Message" is about one message only)."""
    if result.status_code == 401:
        return True
    return result.status_code == 404 and result.discord_code != UNKNOWN_MESSAGE


def _post(url: str, request: BotRequest, settings: RelaySettings) -> DeliveryResult:
    """Post to the request's own destination; a failure on an interaction's follow-up only
    to its user (the "thinking…" message deleted first)."""
    ephemeral = request.followup is not None and _failed(request)
    deleted = None
    if ephemeral:
        label = f"request {request.id}: thinking message"
        deleted = delete_original(url, label=label)
        if not deleted.delivered:
            return deleted
    result = deliver_reply(
        url,
        _reply(request),
        attachment_limit=settings.bot.attachment_limit_bytes,
        skip_messages=request.delivery_messages_sent,
        ephemeral=ephemeral,
    )
    return replace(result, attempts=result.attempts + deleted.attempts) if deleted else result


def _deliver_late(
    request: BotRequest, lease: Lease, settings: RelaySettings, attempts: int, why: str
) -> DeliveryStatus | None:
    """The interaction's token is dead: post to the route's fallback block, or fail saying
    where the answer is kept."""
    fallback = get_bot_config().fallback_for(request.kind, request.route)
    if fallback is None:
        reason = (
            f"not posted: the interaction's token is dead ({why}) and route {request.route!r} "
            f"names no fallback_block (bot.yaml); the answer is kept at "
            f"GET /api/bot/requests/{request.id}"
        )
        log.error("bot request %s: %s", request.id, reason)
        result = DeliveryResult(DeliveryOutcome.REJECTED, attempts=attempts, reason=reason)
        return _record(request, result, lease, settings, give_up=True, late=True)
    try:
        block = load_block(DiscordDestination, fallback.block)
    except Exception as err:
        reason = f"fallback block {fallback.block!r} could not be loaded: {redact_text(str(err))}"
        result = DeliveryResult(DeliveryOutcome.REJECTED, attempts=attempts, reason=reason)
        return _record(request, result, lease, settings, give_up=True, late=True)
    # A first switch starts over: the fallback has none of what the follow-up may have had.
    skip = request.delivery_messages_sent if request.followup == FollowUp.EXPIRED else 0
    result = deliver_reply(
        block.webhook_url.get_secret_value(),
        _reply(request, late=fallback),
        username=block.username,
        avatar_url=block.avatar_url,
        thread_id=block.thread_id,
        attachment_limit=settings.bot.attachment_limit_bytes,
        skip_messages=skip,
    )
    if result.delivered:
        log.info("bot request %s: posted late to %s (%s)", request.id, fallback.block, why)
    result = replace(result, attempts=result.attempts + attempts)
    return _record(request, result, lease, settings, late=True)


def _record(
    request: BotRequest,
    result: DeliveryResult,
    lease: Lease,
    settings: RelaySettings,
    *,
    give_up: bool = False,
    late: bool = False,
    retry_in: float | None = None,
) -> DeliveryStatus | None:
    """Store how the delivery went, and when to try again."""
    attempts = request.delivery_attempts + result.attempts
    give_up = give_up or (not result.delivered and attempts >= settings.bot.delivery_attempts)
    backoff = min(settings.bot.delivery_retry_seconds * 2 ** (attempts // 4), 600.0)
    status = bot_store.record_delivery(
        request.id,
        delivered=result.delivered,
        messages_sent=result.parts_sent,
        attempts=result.attempts,
        error=result.reason,
        give_up=give_up,
        lease=lease,
        retry_in=backoff if retry_in is None else retry_in,
        followup=FollowUp.EXPIRED if late else None,
    )
    if status == DeliveryStatus.FAILED:
        log.error("bot request %s: delivery given up: %s", request.id, result.reason)
    elif status is None:
        log.warning("bot request %s: delivery lease lost; the new holder records it", request.id)
    return status


def destination_url(request: BotRequest) -> str:
    """The webhook URL the answer goes to (from its block, or unsealed from the store)."""
    if request.destination_sealed:
        return unseal(request.destination_sealed)
    if request.destination_block:
        block = load_block(DiscordDestination, request.destination_block)
        return block.webhook_url.get_secret_value()
    raise ValueError("the request names no destination")


def seal_destination(url: str) -> str:
    """What the store keeps of a webhook URL."""
    return seal(url)


def _failed(request: BotRequest) -> bool:
    return request.status in (BotRequestStatus.FAILED, BotRequestStatus.REFUSED)


def _reply(request: BotRequest, late: FallbackBlock | None = None) -> BotReply:
    """What to post; ``late``: in the fallback channel, saying which request it answers."""
    folder = answer_folder(request.id)
    files = tuple(
        ReplyFile(name=f.name, path=folder / f.name, url=file_link(request.id, f.name))
        for f in bot_store.answer_files(request)
    )
    text, failure = request.answer_text or "", _failure_text(request) if _failed(request) else None
    if late is not None:
        intro = (
            f"your /{request.kind} in {_channel_shown(request.channel)} took longer than the "
            "15 minutes Discord lets Relay answer there:"
        )
        text = f"{intro[:1].upper()}{intro[1:]}\n\n{text}" if text else intro
        failure = f"{intro} {failure}" if failure is not None else None
    return BotReply(
        request_id=request.id,
        user_id=request.user_id,
        kind=request.kind,
        text=text,
        files=files,
        failure=failure,
    )


def _channel_shown(channel: str) -> str:
    if channel.isdigit():
        return f"<#{channel}>"  # Discord shows a channel id as the channel's link
    return "your direct messages" if channel == "dm" else f"#{channel}"


def _failure_text(request: BotRequest) -> str:
    text = request.error or "the request failed"
    if request.retry_at:
        text += f" (retry after {request.retry_at:%Y-%m-%d %H:%M:%S} UTC)"
    return text


def file_signature(request_id: str, name: str) -> str:
    """Signature that lets a link to an answer's file be opened without the API token."""
    message = f"{request_id}/{name}".encode()
    return hmac.new(signing_key(), message, hashlib.sha256).hexdigest()[:32]


def file_link(request_id: str, name: str) -> str | None:
    """Public link to an answer's file (``RELAY_PUBLIC_URL`` set), for files too large to
    attach."""
    base = get_settings().public_url.rstrip("/")
    if not base:
        return None
    signature = file_signature(request_id, name)
    return f"{base}/api/bot/requests/{request_id}/files/{quote(name)}?sig={signature}"
