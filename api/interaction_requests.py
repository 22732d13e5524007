"""``/chat``, ``/image`` and ``/video`` from Discord: bot requests, taken in as
``POST /api/bot/requests`` takes them (routes, limits, pools), answered as follow-ups."""

from __future__ import annotations

import math
from datetime import UTC

from fastapi import BackgroundTasks, Request
from pydantic import ValidationError

from api.bot_intake import Refused, take_request
from api.bot_schemas import BotRequestIn
from api.discord_schemas import Interaction, InteractionResponse, deferred, ephemeral
from api.errors import problem_text
from relay_commands import REQUEST_KINDS
from store.usage import Admission


async def request_command(
    request: Request, interaction: Interaction, background: BackgroundTasks
) -> InteractionResponse:
    """Take the command in as a bot request whose answer goes to the interaction's
    follow-up webhook; deferred when queued, an ephemeral message when refused."""
    assert interaction.data is not None  # a command, checked by the caller
    discord = request.app.state.settings.discord
    try:
        body = BotRequestIn(
            kind=REQUEST_KINDS[interaction.data.name],
            prompt=str(interaction.option("prompt") or ""),
            user_id=interaction.user_id,
            channel=interaction.channel_name[:100],
            guild=interaction.guild_id,
            webhook_url=discord.followup_url(interaction.token),
        )
    except ValidationError as err:
        return ephemeral(_problem(err))
    taken = await take_request(
        request, body, background, post_refusal=False, interaction_at=interaction.created_at
    )
    if isinstance(taken, Refused):
        return ephemeral(retry_message(taken.admission))
    return deferred()


def _problem(err: ValidationError) -> str:
    problem = problem_text(err.errors()[0]).replace(": Value error, ", ": ", 1)
    return f"Relay cannot take this request: {problem}."


def retry_message(admission: Admission) -> str:
    """Why a command was refused by a limit, and when to try again (Discord's countdown)."""
    message = (admission.message or "refused").rstrip(".")
    if admission.retry_at is None:
        return f"{message[:1].upper()}{message[1:]}."
    # Discord shows <t:…:R> as a countdown in the user's own language ("in 2 minutes").
    stamp = math.ceil(admission.retry_at.astimezone(UTC).timestamp())
    return f"{message[:1].upper()}{message[1:]}. Try again <t:{stamp}:R>."
