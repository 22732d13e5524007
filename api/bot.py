"""``/api/bot/requests``: intake of Discord bot requests and their status.

Intake answers within a few hundred milliseconds (a Discord interaction must be
acknowledged within 3 s): it routes the request, counts it against the per-user and daily
limits, records it and creates the background task run of its pool, then returns 202.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse

from api import reads
from api.auth import check_token, require_token
from api.bot_schemas import AnswerFile, BotAccepted, BotRequestIn, BotRequestView, Refusal
from api.callbacks import (
    callback_routes,
    callback_view,
    checked_callback_url,
)
from api.errors import ApiError, error_body, error_responses
from api.idempotency import IdempotencyKey, KeyedRequest, fingerprint
from api.submit import dispatch
from blocks.discord import redact_webhook_url
from bot_config import get_bot_config
from store import bot as bot_store
from store import callbacks, usage
from store.bot import RequestIntake
from store.leases import Lease
from store.models import BotRequest, BotRequestStatus, Callback, CallbackSubject, DeliveryStatus
from tasks import metrics
from tasks.callback_events import bot_request_ended

router = APIRouter(prefix="/api/bot/requests", tags=["bot"])
_REQUEST_LINKS = {
    "status": {
        "operationId": "getBotRequest",
        "parameters": {"request_id": "$response.body#/request_id"},
    }
}
SIGNATURE_PATTERN = r"^[0-9a-f]{32}$"


@router.post(
    "",
    status_code=202,
    response_model=BotAccepted,
    dependencies=[Depends(require_token)],
    operation_id="submitBotRequest",
    callbacks=callback_routes("submit_bot_request"),
    summary="Queue a chat, image or video request from the Discord bot",
    responses={
        202: {"links": _REQUEST_LINKS},
        **error_responses(400, 401, 422, 503, _503="the request could not be handed to Prefect"),
        429: {
            "model": Refusal,
            "description": "over a cooldown or daily limit; says when to retry",
            "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}},
        },
    },
)
async def submit(
    body: BotRequestIn,
    request: Request,
    background: BackgroundTasks,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    keyed = KeyedRequest("submitBotRequest", idempotency_key)
    replay = await keyed.start(fingerprint(body.model_dump_json()))
    if replay is not None:  # a retry: the first answer (queued or refused), nothing counted
        return replay
    try:
        answer = await _submit(body, request, background)
    except BaseException:
        await keyed.release()
        raise
    if isinstance(answer, BotAccepted):
        answer = JSONResponse(answer.model_dump(mode="json"), status_code=202)
    return await keyed.answer(answer)


async def _submit(
    body: BotRequestIn, request: Request, background: BackgroundTasks
) -> BotAccepted | JSONResponse:
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
    fields = _fields(body, route, pool, request.app.state.settings.discord.block)
    if not admission.admitted:
        refused = await run_in_threadpool(
            bot_store.create_request,
            **fields,
            callback_url=callback_url,
            deliver=True,  # this process posts the refusal
            status=BotRequestStatus.REFUSED,
            error=admission.message,
            retry_at=admission.retry_at,
            finished_at=datetime.now(UTC),
        )
        metrics.bot_request_ended(body.kind, metrics.NO_PROVIDER, metrics.BotOutcome.REFUSED)
        lease = bot_store.delivery_lease(refused)
        if lease is not None:  # always, with deliver=True
            background.add_task(_deliver, refused.id, lease)  # a sync task: run in a thread
        return _refusal(refused.id, admission)
    dispatch_seconds = config.dispatch_seconds(body.kind, settings.bot.request_lease_seconds)
    stored = await run_in_threadpool(
        bot_store.create_request,
        **fields,
        callback_url=callback_url,
        dispatch_seconds=dispatch_seconds,
        dispatched_at=_now(),
    )
    try:
        await _dispatch(request, stored.id, pool)
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
    return BotAccepted(
        request_id=stored.id,
        status=stored.status,
        kind=stored.kind,
        route=route,
        pool=pool,
        status_url=f"/api/bot/requests/{stored.id}",
    )


@router.get(
    "/{request_id}",
    response_model=BotRequestView,
    dependencies=[Depends(require_token)],
    operation_id="getBotRequest",
    summary="Status and answer of a bot request",
    responses=error_responses(401, 404),
)
async def status(request_id: str) -> BotRequestView:
    stored, called = await reads.read(_request_and_callback, request_id)
    if stored is None:
        raise ApiError(404, "not_found", f"no bot request {request_id!r}")
    return _view(stored, called)


def _request_and_callback(request_id: str) -> tuple[BotRequest | None, Callback | None]:
    stored = bot_store.get_request(request_id)
    if stored is None:
        return None, None
    return stored, callbacks.get(CallbackSubject.BOT_REQUEST, request_id)


@router.get(
    "/{request_id}/files/{name}",
    operation_id="getBotAnswerFile",
    summary="A file of an answer (signed link or token)",
    description="Opened with the `sig` of the link Relay posted to Discord, or with the token.",
    responses={
        200: {"content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}},
        **error_responses(401, 404, 422),
    },
    openapi_extra={"security": [{}, {"HTTPBearer": []}]},
)
async def answer_file(
    request_id: str,
    name: str,
    request: Request,
    sig: Annotated[
        str | None, Query(pattern=SIGNATURE_PATTERN, description="the link's signature")
    ] = None,
) -> FileResponse:
    from tasks.bot_answer import answer_folder
    from tasks.bot_handling import file_signature

    # Compared as bytes: compare_digest refuses str with non-ASCII characters.
    expected = file_signature(request_id, name).encode()
    if not (sig and hmac.compare_digest(sig.encode(), expected)):
        check_token(request)
    stored = await run_in_threadpool(bot_store.get_request, request_id)
    files = {f.name: f for f in bot_store.answer_files(stored)} if stored else {}
    if name not in files:
        raise ApiError(404, "not_found", f"no file {name!r} in bot request {request_id!r}")
    return FileResponse(answer_folder(request_id) / name, media_type=files[name].mime_type)


def _fields(body: BotRequestIn, route: str, pool: str, default_block: str) -> RequestIntake:
    from tasks.bot_handling import seal_destination

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
    from tasks.bot_handling import deliver
    from tasks.callbacks import deliver_now

    deliver(request_id, lease)
    deliver_now(CallbackSubject.BOT_REQUEST, request_id)


def _refusal(request_id: str, admission: usage.Admission) -> JSONResponse:
    retry_at = admission.retry_at or datetime.now(UTC)
    wait = max((retry_at - datetime.now(UTC)).total_seconds(), 0.0)
    body = error_body(
        admission.reason or "refused",
        admission.message or "refused",
        request_id=request_id,
        retry_at=retry_at.isoformat(),
        retry_after_seconds=round(wait, 1),
    )
    return JSONResponse(body, status_code=429, headers={"Retry-After": str(int(wait) + 1)})


def _view(stored: BotRequest, callback: Callback | None = None) -> BotRequestView:
    return BotRequestView(
        **dict(bot_request_ended(stored)),
        user_id=stored.user_id,
        channel=stored.channel,
        destination=stored.destination_shown,
        key_name=stored.key_name,
        upstream_calls=stored.upstream_calls,
        upstream_seconds=stored.upstream_seconds,
        answer_files=[AnswerFile(**f.__dict__) for f in bot_store.answer_files(stored)],
        delivery_status=stored.delivery_status,
        delivery_attempts=stored.delivery_attempts,
        delivery_error=stored.delivery_error,
        callback=callback_view(callback),
    )
