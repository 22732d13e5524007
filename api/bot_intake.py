"""Taking a bot request in: route it, count it against the limits, record it and hand it
to its pool. Shared by ``POST /api/bot/requests`` and the Discord interactions endpoint."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from fastapi import BackgroundTasks, Request
from fastapi.concurrency import run_in_threadpool

from api.bot_schemas import BotRequestIn
from api.callbacks import checked_callback_url
from api.errors import ApiError
from api.submit import dispatch
from blocks.discord import redact_webhook_url
from bot_config import get_bot_config
from store import bot as bot_store
from store import callbacks, followups, usage
from store.bot import RequestIntake
from store.leases import Lease
from store.models import (
    BotRequest,
    BotRequestStatus,
    CallbackSubject,
    DeliveryStatus,
    FollowUp,
)
from tasks import metrics

log = logging.getLogger(__name__)
INTERACTION_DISPATCH_SECONDS = 1.5  # of Discord's 3 s for an interaction's first answer
_late_dispatches: set[asyncio.Future[None]] = set()  # held until done (the loop keeps weak refs)


def _late_dispatch_done(handing: asyncio.Future[None]) -> None:
    _late_dispatches.discard(handing)
    if not handing.cancelled() and handing.exception() is not None:
        failed = type(handing.exception()).__name__
        log.warning("a late dispatch failed (%s); the request's lease brings it back", failed)


@dataclass(frozen=True)
class Accepted:
    """A request recorded and handed to its pool."""

    request: BotRequest
    route: str
    pool: str


@dataclass(frozen=True)
class Refused:
    """A request over a cooldown or a daily limit, recorded as refused."""

    request_id: str
    admission: usage.Admission


async def take_request(
    request: Request,
    body: BotRequestIn,
    background: BackgroundTasks,
    *,
    post_refusal: bool = True,
    interaction_at: datetime | None = None,
) -> Accepted | Refused:
    """Route ``body``, count it against its user's and the daily limits, record it and hand
    it to its pool. A refusal is recorded too; with ``post_refusal`` it is posted to the
    request's destination, else the caller answers it at once (an interaction's response).
    ``interaction_at``: the request is a Discord interaction's, created then (its follow-up
    URL's token lives 15 minutes from then; docs/discord-expiry.md).
    Raises ApiError 422 (prompt too long, callback URL refused) and 503 (Prefect down)."""
    config = get_bot_config()
    if len(body.prompt) > config.max_prompt_chars:
        raise ApiError(
            422,
            "prompt_too_long",
            f"the prompt has {len(body.prompt)} characters; the limit is {config.max_prompt_chars}",
        )
    settings = request.app.state.settings
    callback_url = await checked_callback_url(settings, body.callback_url)
    route, pool = config.route(body.kind, body.channel)
    limits = config.limits[body.kind]
    admission = await run_in_threadpool(
        usage.admit,
        body.user_id,
        body.kind,
        cooldown_seconds=limits.cooldown_seconds,
        per_user_daily=limits.per_user_daily,
        global_daily=limits.global_daily,
    )
    fields = _fields(body, route, pool, settings.discord.block)
    if interaction_at is not None:
        fields["interaction_at"] = interaction_at
    if interaction_at is not None and admission.admitted:  # a refusal is answered at once
        fields["followup"] = FollowUp.LIVE
        notice_seconds = settings.discord.expiry_notice_seconds
        fields["notice_due_at"] = followups.notice_due_at(interaction_at, notice_seconds)
    if not admission.admitted:
        refused = await run_in_threadpool(
            bot_store.create_request,
            **fields,
            callback_url=callback_url,
            deliver=post_refusal,  # this process posts the refusal, or its caller answers it
            delivery_status=DeliveryStatus.PENDING if post_refusal else DeliveryStatus.DELIVERED,
            status=BotRequestStatus.REFUSED,
            error=admission.message,
            retry_at=admission.retry_at,
            finished_at=datetime.now(UTC),
        )
        metrics.bot_request_ended(body.kind, metrics.NO_PROVIDER, metrics.BotOutcome.REFUSED)
        lease = bot_store.delivery_lease(refused)
        if lease is not None:  # with post_refusal
            background.add_task(_deliver, refused.id, lease)  # a sync task: run in a thread
        return Refused(refused.id, admission)
    dispatch_seconds = config.dispatch_seconds(body.kind, settings.bot.request_lease_seconds)
    stored = await run_in_threadpool(
        bot_store.create_request,
        **fields,
        callback_url=callback_url,
        dispatch_seconds=dispatch_seconds,
        dispatched_at=_now(),
    )
    try:
        if interaction_at is None:
            await _dispatch(request, stored.id, pool)
        else:
            # Discord wants its first answer within 3 s: past INTERACTION_DISPATCH_SECONDS
            # the dispatch goes on without the answer waiting for it (a cancelled one left
            # the request to wait out its whole dispatch lease); should it fail, the lease
            # brings the request back.
            handing = asyncio.ensure_future(_dispatch(request, stored.id, pool))
            try:
                await asyncio.wait_for(asyncio.shield(handing), INTERACTION_DISPATCH_SECONDS)
            except TimeoutError:
                log.warning("bot request %s: Prefect slow to take it; answered first", stored.id)
                _late_dispatches.add(handing)
                handing.add_done_callback(_late_dispatch_done)
    except Exception as err:
        # The client hears of it now (503): no callback for a request it was told failed.
        await run_in_threadpool(callbacks.forget, CallbackSubject.BOT_REQUEST, stored.id)
        await run_in_threadpool(
            bot_store.finish_request,
            stored.id,
            status=BotRequestStatus.FAILED,
            lease=bot_store.request_lease(stored),  # this process's, until a run starts it
            error="Relay could not queue the request",
            # The client is told now (503): nothing to post to Discord later.
            delivery_status=DeliveryStatus.FAILED,
            delivery_error="not posted: the client was answered 503",
        )
        metrics.bot_request_ended(body.kind, metrics.NO_PROVIDER, metrics.BotOutcome.FAILED)
        raise ApiError(
            503, "submission_failed", f"could not queue the request: {type(err).__name__}"
        ) from err
    return Accepted(stored, route, pool)


def _fields(body: BotRequestIn, route: str, pool: str, default_block: str) -> RequestIntake:
    from tasks.bot_delivery import seal_destination

    fields: RequestIntake = {
        "kind": body.kind,
        "prompt": body.prompt,
        "user_id": body.user_id,
        "channel": body.channel,
        "guild": body.guild,
        "route": route,
        "pool": pool,
    }
    if body.webhook_url:
        fields["destination_sealed"] = seal_destination(body.webhook_url)
        fields["destination_shown"] = redact_webhook_url(body.webhook_url)
    else:
        block = body.destination or default_block
        fields["destination_block"] = fields["destination_shown"] = block
    return fields


async def _dispatch(request: Request, request_id: str, pool: str) -> None:
    """Create the request's background task run with the app's long-lived Prefect client."""
    await dispatch(request, pool, request_id=request_id)


def _now() -> datetime:
    return datetime.now(UTC)


def _deliver(request_id: str, lease: Lease) -> None:
    from tasks.bot_delivery import deliver
    from tasks.callbacks import deliver_now

    deliver(request_id, lease)
    deliver_now(CallbackSubject.BOT_REQUEST, request_id)
