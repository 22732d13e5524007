"""Completion callbacks in the API: the ``callback_url`` a client gives at intake (checked
here, and again at delivery), its delivery status in the job's ``GET``, and the OpenAPI
``callbacks`` object that describes the POST Relay sends (docs/callbacks.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from starlette.routing import BaseRoute

from api.errors import ApiError
from relay_settings import RelaySettings
from store.models import Callback, CallbackKind, CallbackStatus, as_utc
from tasks import safe_http
from tasks.callback_events import CallbackEvent
from tasks.callbacks import message_id, signing_key

URL_MAX_LENGTH = 2048
CallbackUrl = Annotated[str, Field(max_length=URL_MAX_LENGTH, json_schema_extra={"format": "uri"})]
CALLBACK_URL_FIELD: Any = Field(
    default=None,
    description="Where Relay POSTs the job's status when it ends (Standard Webhooks, signed "
    "with RELAY_CALLBACK_SIGNING_KEY; docs/callbacks.md). Public http(s) addresses only.",
)


class CallbackView(BaseModel):
    """How a job's completion callback stands."""

    kind: CallbackKind = Field(
        default=CallbackKind.WEBHOOK,
        description="webhook: a signed POST to the job's callback_url; discord: the "
        "follow-up of the /transcribe interaction the job came from",
    )
    url: str = Field(
        description="scheme, host and path (no query: tokens travel there; a Discord "
        "follow-up's token is ***)"
    )
    webhook_id: str = Field(description="the webhook-id header, the same on every attempt")
    status: CallbackStatus = Field(
        description="waiting (the job runs), pending, retrying, delivered or failed"
    )
    event: str | None
    attempts: int
    last_error: str | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None


def callback_view(callback: Callback | None) -> CallbackView | None:
    """The callback as clients see it (None: none was asked for)."""
    if callback is None:
        return None
    retrying = callback.status == CallbackStatus.RETRYING and callback.lease_token is None
    return CallbackView(
        kind=callback.kind,
        url=callback.url_shown,
        webhook_id=message_id(callback.id),
        status=callback.status,
        event=callback.event,
        attempts=callback.attempts,
        last_error=callback.last_error,
        next_attempt_at=as_utc(callback.lease_expires_at) if retrying else None,
        delivered_at=as_utc(callback.delivered_at),
    )


async def checked_callback_url(settings: RelaySettings, url: str | None) -> str | None:
    """The ``callback_url`` if Relay may call it back; ApiError 422 ``callback_not_allowed``
    with the reason otherwise. Checked after DNS; checked again before every attempt."""
    if not url:
        return None
    try:
        signing_key(settings.callback.signing_key.get_secret_value())
    except ValueError as err:
        raise ApiError(
            422,
            "callback_not_allowed",
            f"this Relay sends no callbacks: {err} (a receiver could not verify them)",
            reason="no_signing_key",
        ) from err
    allow = settings.callback.allow_private
    try:
        await run_in_threadpool(safe_http.check, url, allow_private=allow)
    except safe_http.UrlRefusedError as err:
        raise ApiError(422, "callback_not_allowed", str(err), reason=str(err.reason)) from err
    return url


def callback_routes(operation: str) -> list[BaseRoute]:
    """The OpenAPI ``callbacks`` of an operation whose body may carry a ``callback_url``:
    the POST Relay sends when the job ends (described, never served)."""
    router = APIRouter()

    @router.post(
        "{$request.body#/callback_url}",
        operation_id=f"{operation}_callback",
        summary="Relay calls back when the job ends",
        description="Retried with backoff on 5xx, 408, 429, timeouts and connection errors; "
        "the same webhook-id on every retry. Any 2xx is taken as received; a 3xx is not "
        "followed.",
        responses={200: {"description": "received (any 2xx)"}},
    )
    def job_ended(
        body: CallbackEvent,
        webhook_id: Annotated[str, Header(description="msg_<id>: de-duplicate on it")],
        webhook_timestamp: Annotated[str, Header(description="seconds since the epoch")],
        webhook_signature: Annotated[
            str, Header(description="v1,<base64 HMAC-SHA256 of id.timestamp.body>")
        ],
    ) -> None:
        """Described, not served."""

    return router.routes
