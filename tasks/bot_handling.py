"""One bot request from claim to Discord: ask the provider, store the answer, deliver it."""

from __future__ import annotations

import hashlib
import hmac
import logging
from datetime import UTC, datetime
from urllib.parse import quote

from blocks.discord import DiscordDestination, redact_text
from blocks.prefect_sync import load_block
from bot_config import get_bot_config, is_kind
from relay_settings import get_settings
from store import bot as bot_store
from store.leases import Lease, LeaseOutcome, process_owner, renewal_interval, renewing
from store.models import BotRequest, BotRequestStatus, CallbackSubject, DeliveryStatus, as_utc
from store.sealed import seal, signing_key, unseal
from tasks import metrics
from tasks.bot_answer import Answer, answer_folder, ask_provider
from tasks.bot_reply import BotReply, ReplyFile, deliver_reply
from tasks.callbacks import deliver_now
from tasks.providers import UpstreamError
from tasks.quota import QuotaExhaustedError, loaded_provider

log = logging.getLogger("relay.bot")
WORKER = process_owner()
USER_MESSAGES = {
    "unauthorized": "the AI provider refused every key Relay has; an operator has been told",
    "unavailable": "the AI provider is not answering right now; please try again later",
    "rate_limited": "the AI provider is busy; please try again in a minute",
}


def handle_request(request_id: str) -> str:
    """Answer the request unless another worker has it; returns its final status."""
    claimed = bot_store.claim_request(request_id, WORKER)
    if claimed is None:
        current = bot_store.get_request(request_id)
        log.info("bot request %s: not claimed (%s)", request_id, current and current.status)
        return current.status if current else LeaseOutcome.MISSING
    request, held = claimed
    seconds = get_settings().bot.request_lease_seconds
    answer, provider = None, None
    try:
        with renewing(
            lambda: bot_store.renew_request(request_id, held),
            renewal_interval(seconds),
            f"bot request {request_id}",
        ):
            answer = ask_provider(request, get_bot_config())
    except QuotaExhaustedError as err:
        provider = err.provider
        lease = _finish_failed(request, held, str(err), retry_at=err.next_slot_at)
    except UpstreamError as err:
        provider = _provider_of(request.kind)
        message = err.args[0] if err.kind == "refused" else USER_MESSAGES[err.kind]
        lease = _finish_failed(request, held, message, detail=f"{err.kind}: {err}")
    except Exception as err:  # a bug or a broken configuration: still answer the user
        log.exception("bot request %s failed", request_id)
        provider = _provider_of(request.kind)
        detail = redact_text(repr(err))
        message = "Relay could not answer this request"
        lease = _finish_failed(request, held, message, detail=detail)
    else:
        provider = answer.provider
        lease = bot_store.finish_request(
            request_id,
            status=BotRequestStatus.COMPLETED,
            lease=held,
            answer_text=answer.text,
            files=answer.files,
            provider=answer.provider,
            model=answer.model,
            key_name=answer.spent.key_name,
            upstream_calls=answer.spent.calls,
            upstream_seconds=round(answer.upstream_seconds, 4),
        )
    if lease is None:  # taken from us as stranded: the other worker's answer is posted
        log.warning("bot request %s: answered elsewhere meanwhile; not posting", request_id)
    else:
        delivered = deliver(request_id, lease) == DeliveryStatus.DELIVERED
        _count(request, provider, answer, delivered)
        deliver_now(CallbackSubject.BOT_REQUEST, request_id)  # after Discord has the answer
    final = bot_store.get_request(request_id)
    return final.status if final else LeaseOutcome.MISSING


def _count(
    request: BotRequest, provider: str | None, answer: Answer | None, delivered: bool
) -> None:
    """The request ended here: count it, and for an answer Discord took, what Relay added
    to the provider's time (from intake, by the API host's clock)."""
    if answer is None:
        metrics.bot_request_ended(request.kind, provider, metrics.BotOutcome.FAILED)
        return
    added = None
    if delivered:
        created = as_utc(request.created_at)
        added = (datetime.now(UTC) - created).total_seconds() - answer.upstream_seconds
    metrics.bot_request_ended(
        request.kind, provider, metrics.BotOutcome.COMPLETED, added_seconds=added
    )


def _provider_of(kind: str) -> str | None:
    """The provider of the kind's key pool, if this process has loaded it."""
    if not is_kind(kind):
        return None
    return loaded_provider(get_bot_config().providers[kind].key_pool)


def _finish_failed(
    request: BotRequest,
    held: Lease,
    message: str,
    *,
    detail: str | None = None,
    retry_at: datetime | None = None,
) -> Lease | None:
    log.warning("bot request %s failed: %s", request.id, detail or message)
    return bot_store.finish_request(
        request.id,
        status=BotRequestStatus.FAILED,
        lease=held,
        error=message,
        retry_at=retry_at,
    )


def deliver(request_id: str, lease: Lease) -> DeliveryStatus | None:
    """Post a finished request's answer (or refusal) to its destination, holding its delivery
    ``lease``; records how it went and when to try again. Never raises."""
    request = bot_store.get_request(request_id)
    if request is None or request.delivery_status == DeliveryStatus.DELIVERED:
        return request.delivery_status if request else None
    settings = get_settings()
    try:
        url = destination_url(request)
    except Exception as err:
        error = f"no destination to post to: {redact_text(str(err))}"
        return bot_store.record_delivery(
            request_id,
            delivered=False,
            messages_sent=0,
            attempts=0,
            error=error,
            give_up=True,
            lease=lease,
        )
    result = deliver_reply(
        url,
        _reply(request),
        attachment_limit=settings.bot.attachment_limit_bytes,
        skip_messages=request.delivery_messages_sent,
    )
    attempts = request.delivery_attempts + result.attempts
    give_up = not result.delivered and attempts >= settings.bot.delivery_attempts
    status = bot_store.record_delivery(
        request_id,
        delivered=result.delivered,
        messages_sent=result.parts_sent,
        attempts=result.attempts,
        error=result.reason,
        give_up=give_up,
        lease=lease,
        retry_in=min(settings.bot.delivery_retry_seconds * 2 ** (attempts // 4), 600.0),
    )
    if status == DeliveryStatus.FAILED:
        log.error("bot request %s: delivery given up: %s", request_id, result.reason)
    elif status is None:
        log.warning("bot request %s: delivery lease lost; the new holder records it", request_id)
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


def _reply(request: BotRequest) -> BotReply:
    failed = request.status in (BotRequestStatus.FAILED, BotRequestStatus.REFUSED)
    folder = answer_folder(request.id)
    files = tuple(
        ReplyFile(name=f.name, path=folder / f.name, url=file_link(request.id, f.name))
        for f in bot_store.answer_files(request)
    )
    return BotReply(
        request_id=request.id,
        user_id=request.user_id,
        kind=request.kind,
        text=request.answer_text or "",
        files=files,
        failure=_failure_text(request) if failed else None,
    )


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
