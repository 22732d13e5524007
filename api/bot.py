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
from api.bot_intake import Refused, take_request
from api.bot_schemas import AnswerFile, BotAccepted, BotRequestIn, BotRequestView, Refusal
from api.callbacks import (
    callback_routes,
    callback_view,
)
from api.errors import ApiError, error_body, error_responses
from api.idempotency import IdempotencyKey, KeyedRequest, fingerprint
from store import bot as bot_store
from store import callbacks, usage
from store.models import BotRequest, Callback, CallbackSubject
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
        taken = await take_request(request, body, background)
    except BaseException:
        await keyed.release()
        raise
    if isinstance(taken, Refused):
        return await keyed.answer(_refusal(taken.request_id, taken.admission))
    accepted = BotAccepted(
        request_id=taken.request.id,
        status=taken.request.status,
        kind=taken.request.kind,
        route=taken.route,
        pool=taken.pool,
        status_url=f"/api/bot/requests/{taken.request.id}",
    )
    return await keyed.answer(JSONResponse(accepted.model_dump(mode="json"), status_code=202))


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
        interaction_at=stored.interaction_at,
        followup=stored.followup,
        callback=callback_view(callback),
    )
