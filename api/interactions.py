"""``POST /api/discord/interactions``: Discord's interactions endpoint.

Discord POSTs every slash command here, signed with the application's key; no bearer token
(Discord cannot send one). A PING is answered PONG; a command is answered within Discord's
3 s: a refusal known at once, and /status and /stats (read in time), as an ephemeral
message; anything that takes longer as a deferred response whose answer comes later as
follow-ups on the interaction's webhook. The
same interaction delivered twice (Discord retrying, two API replicas) is answered once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Header, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from api.discord_schemas import (
    Interaction,
    InteractionResponse,
    InteractionType,
    ephemeral,
    pong,
)
from api.discord_signature import NO_SIGNATURE, SignatureError, verify_interaction
from api.errors import ApiError, error_responses, problem_text
from api.idempotency import KeyedRequest, fingerprint
from api.interaction_requests import request_command
from api.interaction_stats import stats_command
from api.interaction_status import status_command
from api.interaction_transcribe import transcribe_command
from relay_commands import REQUEST_KINDS

router = APIRouter(prefix="/api/discord", tags=["discord"])
# An interaction is a few kB (its resolved users, channels and attachments included).
MAX_BODY_BYTES = 128 * 1024
TOO_LARGE = f"an interaction is at most {MAX_BODY_BYTES // 1024} KiB"
# What the endpoint cannot work without: the key that signs, the id follow-ups go to.
_REQUIRED = {
    "RELAY_DISCORD_PUBLIC_KEY": "public_key",
    "RELAY_DISCORD_APPLICATION_ID": "application_id",
}

CommandHandler = Callable[[Request, Interaction, BackgroundTasks], Awaitable[InteractionResponse]]
# What answers each slash command (relay_commands.COMMANDS defines them for Discord).
HANDLERS: dict[str, CommandHandler] = {
    **{name: request_command for name in REQUEST_KINDS},
    "transcribe": transcribe_command,
    "status": status_command,
    "stats": stats_command,
}


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``$defs`` references written out (the document has no $defs)."""
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {"$ref"} and node["$ref"].startswith("#/$defs/"):
                return resolve(definitions[node["$ref"].removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)  # type: ignore[no-any-return]


_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": _inlined(Interaction.model_json_schema())}},
    },
    "security": [{}],
}


@router.post(
    "/interactions",
    response_model=InteractionResponse,
    response_model_exclude_none=True,
    operation_id="discordInteraction",
    summary="Discord's interactions endpoint (Ed25519-signed slash commands)",
    description="Point the Discord application's *Interactions Endpoint URL* here "
    "(docs/discord-app.md). Every request must carry Discord's signature; the answer is a PONG, a "
    "message only the user sees (a refusal, or the answer of /status and /stats, "
    "docs/discord-admin.md) or a deferred response whose answer follows on the interaction's "
    "webhook. A second delivery of an interaction gets the first answer.",
    openapi_extra=_BODY,
    responses=error_responses(
        401,
        409,
        413,
        422,
        503,
        _401="no signature, a wrong one, or a timestamp over 5 minutes old (a replay)",
        _409="the same interaction is being answered by another request right now",
        _413="a body over 128 KiB (no interaction is that large)",
        _503="RELAY_DISCORD_PUBLIC_KEY or RELAY_DISCORD_APPLICATION_ID is not set",
    ),
)
async def interactions(
    request: Request,
    background: BackgroundTasks,
    signature: Annotated[str | None, Header(alias="X-Signature-Ed25519")] = None,
    timestamp: Annotated[str | None, Header(alias="X-Signature-Timestamp")] = None,
) -> JSONResponse:
    discord = request.app.state.settings.discord
    missing = [name for name, value in _REQUIRED.items() if not getattr(discord, value)]
    if missing:
        raise ApiError(
            503,
            "not_configured",
            f"{' and '.join(missing)} not set: Relay takes no Discord interactions",
        )
    if not signature or not timestamp:  # before reading a body nobody signed
        raise ApiError(401, "bad_signature", NO_SIGNATURE)
    body = await _capped_body(request)
    try:
        verify_interaction(discord.public_key, signature, timestamp, body)
    except SignatureError as err:
        raise ApiError(401, "bad_signature", str(err)) from None
    try:
        interaction = Interaction.model_validate_json(body)
    except ValidationError as err:
        raise ApiError(422, "invalid_interaction", _first_problem(err)) from None
    if interaction.type == InteractionType.PING:
        return _json(pong())
    keyed = KeyedRequest("discordInteraction", interaction.id)
    replay = await keyed.start(fingerprint(body))
    if replay is not None:
        return replay
    try:
        answer = await _answer(request, interaction, background)
    except BaseException:
        await keyed.release()
        raise
    return await keyed.answer(_json(answer))


async def _answer(
    request: Request, interaction: Interaction, background: BackgroundTasks
) -> InteractionResponse:
    """What to answer a signed interaction that is not a PING."""
    discord = request.app.state.settings.discord
    if interaction.type != InteractionType.APPLICATION_COMMAND or interaction.data is None:
        return ephemeral("Relay answers slash commands only.")
    if interaction.guild_id is None and not discord.allow_dms:
        return ephemeral("Relay does not answer in direct messages: use a server's channel.")
    guilds = discord.allowed_guilds()
    if interaction.guild_id is not None and guilds and interaction.guild_id not in guilds:
        return ephemeral("Relay is not enabled in this server.")
    handler = HANDLERS.get(interaction.data.name)
    if handler is None:
        return ephemeral(f"Relay has no /{interaction.data.name} command.")
    try:
        return await handler(request, interaction, background)
    except ApiError as err:  # the user's mistake, or Relay's trouble: say so, only to them
        later = " Try again in a minute." if err.status >= 500 else ""
        return ephemeral(f"{err.message[:1].upper()}{err.message[1:]}.{later}")


async def _capped_body(request: Request) -> bytes:
    """The raw body, refused (413) past MAX_BODY_BYTES: the endpoint is public and reads the
    body before it can check who sent it."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, "too_large", TOO_LARGE)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, "too_large", TOO_LARGE)
    return bytes(body)


def _json(answer: InteractionResponse) -> JSONResponse:
    return JSONResponse(answer.model_dump(mode="json", exclude_none=True))


def _first_problem(err: ValidationError) -> str:
    return f"not a Discord interaction: {problem_text(err.errors()[0])}"
