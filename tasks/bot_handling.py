"""One bot request from claim to Discord: ask the provider, store the answer, deliver it
(tasks/bot_delivery.py)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from blocks.discord import redact_text
from bot_config import get_bot_config, is_kind
from relay_settings import get_settings
from store import bot as bot_store
from store.leases import Lease, LeaseOutcome, process_owner, renewal_interval, renewing
from store.models import BotRequest, BotRequestStatus, CallbackSubject, DeliveryStatus, as_utc
from tasks import metrics
from tasks.bot_answer import Answer, ask_provider
from tasks.bot_delivery import deliver, destination_url, file_link, file_signature, seal_destination
from tasks.callbacks import deliver_now
from tasks.providers import UpstreamError
from tasks.quota import QuotaExhaustedError, loaded_provider

# Where they lived before tasks/bot_delivery.py: callers may still import them from here.
__all__ = [
    "deliver",
    "destination_url",
    "file_link",
    "file_signature",
    "handle_request",
    "seal_destination",
]
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
